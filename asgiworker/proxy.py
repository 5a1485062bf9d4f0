"""Proxy headers from trusted peers: Gunicorn's `forwarded_allow_ips` and `secure_scheme_headers`.

Only a peer listed in `forwarded_allow_ips` (addresses or networks, `*` for any; UNIX-socket peers
count as trusted, as in Gunicorn) may set the scheme (through `secure_scheme_headers`, and
`X-Forwarded-Proto`) and the client address (through `X-Forwarded-For`).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Iterable, List, Optional, Tuple

from asgiworker.wire.memo import BoundedMemo

FORWARDED_FOR = b"x-forwarded-for"
FORWARDED_PROTO = b"x-forwarded-proto"


class ContradictorySchemeHeaders(ValueError):
    """Two scheme headers of a trusted proxy disagree (Gunicorn answers 400, and so do we: the
    client may have added one that the proxy did not clear)."""


class ProxyPolicy:
    def __init__(self, allow: Iterable[str], secure_scheme_headers: Dict[str, str]) -> None:
        allow = [a.strip() for a in allow if a and a.strip()]
        self.any = "*" in allow
        # Verdicts by peer address (X-Forwarded-For hops are the client's to choose: bounded).
        self._verdicts = BoundedMemo(4096)
        self.networks = []
        for entry in allow:
            if entry == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                pass  # Gunicorn validated the setting already; skip what is not an address
        self.secure = {k.lower().encode("latin-1"): v.lower().encode("latin-1")
                       for k, v in (secure_scheme_headers or {}).items()}
        self.header_names = frozenset((FORWARDED_FOR, FORWARDED_PROTO, *self.secure))

    @classmethod
    def from_gunicorn(cls, cfg: Any) -> "ProxyPolicy":
        allow = cfg.forwarded_allow_ips
        if isinstance(allow, str):
            allow = allow.split(",")
        return cls(allow, cfg.secure_scheme_headers)

    def trusts(self, host: Optional[str]) -> bool:
        if host is None:
            return True  # a UNIX socket: only local processes can reach it
        if self.any:
            return True
        # Asked for every connection, mostly about the same few peers: parsing an address is
        # far dearer than looking up the verdict.
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in network for network in self.networks)
            self._verdicts.remember(host, verdict)
        return bool(verdict)

    def apply(self, found: List[Tuple[bytes, bytes]], client: Any, scheme: str) -> "tuple[Any, str]":
        """The (client, scheme) a trusted proxy's headers say; ContradictorySchemeHeaders if
        two of them say different schemes (as Gunicorn's own workers judge them: a secure
        scheme header with another value says http)."""
        said: Optional[str] = None
        for name, value in found:
            if name == FORWARDED_FOR:
                client = self._client_from(value, client)
                continue
            if name == FORWARDED_PROTO:
                proto = value.split(b",")[-1].strip().lower()
                this = proto.decode("ascii") if proto in (b"http", b"https") else None
            elif name in self.secure:
                this = "https" if self.secure[name] == value.strip().lower() else "http"
            else:
                continue
            if this is not None:
                if said is not None and this != said:
                    raise ContradictorySchemeHeaders(f"{said} and {this}")
                said = scheme = this
        return client, scheme

    def _client_from(self, value: bytes, client: Any) -> Any:
        hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
        # The rightmost hop we do not trust is the real client: anything left of it is whatever
        # the client chose to write.
        for hop in reversed(hops):
            if not self.trusts(hop):
                return (hop, 0)
        return (hops[0], 0) if hops else client
