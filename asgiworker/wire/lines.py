"""Lines every writer shares: status lines, length lines, and the one error response the server
writes on its own (HTTP and WebSocket alike)."""

from __future__ import annotations

from http import HTTPStatus

from asgiworker.wire.memo import BoundedMemo


def phrase(status: int) -> bytes:
    """The reason phrase of ``status`` (empty for a code HTTPStatus does not know)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase(status))


STATUS_LINES = {int(s): _status_line(int(s)) for s in HTTPStatus}
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or _status_line(status)


# `content-length: N` lines, made once per N (formatting an int is dear; bodies repeat sizes).
_LENGTH_LINES = BoundedMemo(4096)


def length_line(length: int) -> bytes:
    line = _LENGTH_LINES.get(length)
    if line is None:
        line = _LENGTH_LINES.remember(length, b"content-length: %d\r\n" % length)
    return line  # type: ignore[no-any-return]  # the memo holds only bytes


def error_response(status: int, text: str, default_headers: bytes = b"", extra_headers: bytes = b"",
                   head: bool = False) -> bytes:
    """A complete response the server writes on its own (a refusal, a timeout, a failed app):
    plain text saying why, then the connection closes. ``default_headers``: the server's Date
    and Server lines; ``extra_headers``: whole header lines the status calls for; ``head``: the
    answer to a HEAD request, the same head without the body (its client reads none: the text
    would be read as the start of the next response)."""
    body = text.encode("utf-8") + b"\n"
    return b"".join((
        status_line(status),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        extra_headers,
        default_headers,
        b"\r\n",
        b"" if head else body,
    ))
