"""The ASGI TLS extension (``scope['extensions']['tls']``), computed once per TLS connection."""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def read_server_cert(certfile: Optional[str]) -> Optional[str]:
    """The PEM of the server's own certificate (the first in Gunicorn's certfile)."""
    if not certfile:
        return None
    try:
        with open(certfile, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    stop = text.find(end, start)
    return text[start:stop + len(end)] + "\n" if start >= 0 and stop >= 0 else None


# RFC 4514 section 3: the attribute types with a short name; others keep the name ssl gives.
_SHORT_NAMES = {
    "commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST", "organizationName": "O",
    "organizationalUnitName": "OU", "countryName": "C", "streetAddress": "STREET",
    "domainComponent": "DC", "userId": "UID",
}


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def rfc4514_name(subject: Any) -> Optional[str]:
    """A distinguished name as RFC 4514 writes it: most specific RDN first, short type names,
    special characters escaped."""
    rdns = []
    for rdn in reversed(subject or ()):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(str(v))}" for k, v in rdn))
    return ",".join(rdns) or None


def tls_extension(ssl_object: Any, server_cert: Optional[str]) -> Dict[str, Any]:
    client_chain = []
    client_name = None
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        client_chain.append(ssl.DER_cert_to_PEM_cert(der))
        subject = (ssl_object.getpeercert() or {}).get("subject", ())
        client_name = rfc4514_name(subject)
    cipher = ssl_object.cipher()
    return {
        "server_cert": server_cert,
        "client_cert_chain": client_chain,
        "client_cert_name": client_name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        # Python's ssl module names the suite but does not give its IANA number.
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }
