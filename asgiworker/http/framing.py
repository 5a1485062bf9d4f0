"""How a response body is delimited on the wire: one pure decision (RFC 9112 section 6)."""

from __future__ import annotations

from enum import IntEnum
from typing import Optional


class Framing(IntEnum):
    NO_BODY = 0  # 1xx, 204, 304: no framing line, never a body byte or a chunk
    LENGTH = 1  # Content-Length (the app's, or the one body part's length, counted by us)
    CHUNKED = 2  # transfer-encoding: chunked (a stream of unknown length to an HTTP/1.1 client)
    UNTIL_CLOSE = 3  # close-delimited (a stream of unknown length to an HTTP/1.0 client)


# As plain ints for the hot path: CPython compares exact ints in its fast path, int subclasses
# (enum members) in the slow one.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = (int(framing) for framing in Framing)


def choose_framing(status: int, head_request: bool, app_length: Optional[int], body_length: Optional[int],
                   http11: bool) -> int:
    """The framing of a response whose head is written now. ``app_length``: the app's
    Content-Length, if it gave one; ``body_length``: the length of the whole body when it is the
    one part sent with the head, None when more parts follow. A response to HEAD is framed as
    the same GET's would be (and the writer sends no body), except that an empty one-part body
    says nothing about the GET's length, so no length is claimed. Returns a ``Framing`` value
    (as a plain int)."""
    if status < 200 or status == 204 or status == 304:
        return NO_BODY
    if app_length is not None:
        return LENGTH
    if body_length is not None:
        return NO_BODY if head_request and body_length == 0 else LENGTH
    return CHUNKED if http11 else UNTIL_CLOSE
