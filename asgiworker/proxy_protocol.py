"""The PROXY protocol (v1 text, v2 binary) that HAProxy, stunnel or a cloud load balancer put in
front of the first request to say who the real client is. Enabled by Gunicorn's
``--proxy-protocol [v1|v2|auto]``, accepted only from ``--proxy-allow-from`` peers.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Optional, Tuple

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included

Address = Optional[Tuple[str, int]]


class ProxyHeaderError(Exception):
    """A PROXY header that is malformed, or not allowed from this peer or in this mode."""


def parse(data: bytes, mode: str) -> "Optional[tuple[int, Address, Address]]":
    """(bytes consumed, client, server) from the start of ``data``; None if it may still be a
    partial header. (0, None, None) when the data does not start with a PROXY header at all."""
    if data.startswith(V1_PREFIX) or (len(data) < len(V1_PREFIX) and V1_PREFIX.startswith(data)):
        if mode == "v2":
            raise ProxyHeaderError("PROXY protocol v1 header, but only v2 is enabled")
        return _parse_v1(data)
    if data.startswith(V2_SIGNATURE) or (len(data) < len(V2_SIGNATURE) and V2_SIGNATURE.startswith(data)):
        if mode == "v1":
            raise ProxyHeaderError("PROXY protocol v2 header, but only v1 is enabled")
        return _parse_v2(data)
    return 0, None, None


def _parse_v1(data: bytes) -> "Optional[tuple[int, Address, Address]]":
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return end + 2, None, None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("Malformed PROXY v1 line")
    try:
        family = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
        src, dst = str(family(parts[2])), str(family(parts[3]))
        sport, dport = int(parts[4]), int(parts[5])
    except ValueError:
        raise ProxyHeaderError("Malformed PROXY v1 addresses") from None
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ProxyHeaderError("Malformed PROXY v1 ports")
    return end + 2, (src, sport), (dst, dport)


def _parse_v2(data: bytes) -> "Optional[tuple[int, Address, Address]]":
    if len(data) < 16:
        return None
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("Unsupported PROXY v2 version")
    total = 16 + length
    if len(data) < total:
        return None
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the proxy talking for itself (health checks)
        return total, None, None
    if command != 1:
        raise ProxyHeaderError("Unknown PROXY v2 command")
    body = data[16:total]
    if family == 0x11 and length >= 12:  # TCP over IPv4
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 0x21 and length >= 36:  # TCP over IPv6
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        return total, None, None  # UNSPEC, UDP or UNIX: keep the socket's own addresses
    return total, (src, sport), (dst, dport)


def mode_from_gunicorn(cfg: Any) -> str:
    value = getattr(cfg, "proxy_protocol", "off")
    if value is True:
        return "auto"
    if not value or value is False:
        return "off"
    return str(value).lower()
