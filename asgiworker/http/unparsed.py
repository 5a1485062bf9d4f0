"""Reading what llhttp does not parse for us: the PROXY protocol header in front of a
connection's first request, and a request line whose method llhttp does not know (to tell a
well-formed request for a method we do not implement, 501, from garbage, 400).

``UnparsedInput`` is a part of ``HttpConnection`` (which holds the attributes used here).
"""

from __future__ import annotations

from typing import Any, Optional

from asgiworker import proxy_protocol
from asgiworker.wire.grammar import REQUEST_LINE_PREFIX, UNKNOWN_METHOD_LINE


class UnparsedInput:
    # Declared for the type checker; set by HttpConnection.
    settings: Any
    client: Any
    server: Any
    _bad_line: Optional[bytes]
    _proxy_buffer: Optional[bytes]

    def _reject(self, status: int, reason: str, quiet: bool = False) -> None:
        raise NotImplementedError  # HttpConnection's

    def _read_bad_request_line(self, data: bytes) -> None:
        bad_line = self._bad_line or b""
        line = bad_line + (data if bad_line else data.lstrip(b"\r\n"))
        end = line.find(b"\r\n")
        if end < 0 and len(line) <= self.settings.limit_request_line + 32 and REQUEST_LINE_PREFIX.fullmatch(line):
            self._bad_line = line  # bounded; the header timeout ends a client that stops here
            return
        self._bad_line = None
        if end >= 0 and UNKNOWN_METHOD_LINE.fullmatch(line[:end + 2]):
            self._reject(501, "Method not implemented")
        else:
            self._reject(400, "Invalid HTTP method")

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Strip a PROXY protocol header off the connection's first bytes; return the rest."""
        buffer = (self._proxy_buffer or b"") + data
        try:
            result = proxy_protocol.parse(buffer, self.settings.proxy_protocol)
        except proxy_protocol.ProxyHeaderError as exc:
            self._reject(400, str(exc))
            return b""
        if result is None:
            self._proxy_buffer = buffer
            return b""
        self._proxy_buffer = None
        consumed, client, server = result
        if consumed:
            peers = self.settings.proxy_protocol_peers
            if peers is not None and not peers.trusts(self.client[0] if self.client else None):
                self._reject(403, "PROXY protocol header not allowed from this peer")
                return b""
            self.client = client or self.client
            self.server = server or self.server
        return buffer[consumed:]
