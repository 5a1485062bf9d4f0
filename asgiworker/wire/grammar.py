"""The bytes of HTTP/1.1 (RFC 9110, RFC 9112), written once: what the reader and the writers check.

Only the rules the parser (llhttp, through httptools) does not enforce itself live here; the token
character class is spelled out once and every pattern is built from it.
"""

from __future__ import annotations

import re

# tchar (RFC 9110 5.6.2): the characters of a token, as a regex class body.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
TOKEN_BYTES = frozenset(byte for byte in range(256) if TOKEN.fullmatch(bytes((byte,))))
# uri-host [ ":" port ]: an IP literal or a reg-name (RFC 3986), nothing else.
HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?")
# What a request line can look like before its CRLF has arrived: a token, then printable ASCII.
REQUEST_LINE_PREFIX = re.compile(rb"[" + _TCHAR + rb"]*( [\x21-\x7e ]*)?\r?")
# A whole request line with a method token llhttp does not know (answered 501, not 400).
UNKNOWN_METHOD_LINE = re.compile(rb"[" + _TCHAR + rb"]+ [^ ]+ HTTP/1\.[01]\r\n")
OWS = (b" ", b"\t")
# Every request head ends in CRLF CRLF (the parser takes no bare LF), and the shortest complete
# request is 18 bytes (`GET / HTTP/1.0` CRLF CRLF).
HEAD_END = b"\r\n\r\n"
MIN_REQUEST = 18
# Request headers the reader looks at itself (and, from a trusted proxy, its headers too).
SPECIAL_HEADERS = frozenset((b"host", b"transfer-encoding", b"expect", b"upgrade", b"content-length"))
