"""The one check of every response head the server writes: the app's HTTP response headers, a
WebSocket app's accept headers and its denial response all go through ``check_headers``.

The result is one block of header lines, with the framing headers taken out (the server frames
every body itself: it writes Content-Length once, in canonical form, never the app's
Transfer-Encoding) and what they asked for kept: the Content-Length value, and whether the app
asked to close. Checked blocks are remembered by header set (``head_block``): apps send the same
few sets again and again.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from asgiworker.wire.grammar import TOKEN
from asgiworker.wire.memo import BoundedMemo

# (the app's header lines, each ending in CRLF; the app's Content-Length, to be written by us;
# whether the app sent `connection: close`). A plain tuple: unpacked on every response, and
# CPython unpacks exact tuples in its fast path.
HeaderBlock = Tuple[bytes, Optional[int], bool]


# Checked blocks by header set: only hashable sets (tuples of tuples) are remembered, and only
# small ones (a per-response value such as a cookie must not fill memory with big blocks).
HEAD_BLOCKS = BoundedMemo(1024)
_MAX_CACHED_BLOCK = 4096
# Header names already found to be tokens.
_GOOD_NAMES = BoundedMemo(4096)
# Every control character a field value may not hold, but CR and LF (counted apart: every line
# ends in CRLF), mapped to NUL; all other bytes to themselves. (translate + find: half the time
# of a regex search.)
_CONTROL_TO_NUL = bytes(0 if (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F else byte
                        for byte in range(256))


def head_block(headers: Any) -> HeaderBlock:
    """``check_headers`` of an app's response headers, from memory when the set was seen."""
    try:
        headers = headers if type(headers) is tuple else tuple(headers)
    except TypeError:
        pass  # not iterable: check_headers says so
    # (headers as tuples only: [name, value] lists cannot be keys)
    cacheable = type(headers) is tuple and (not headers or type(headers[0]) is tuple)
    if cacheable:
        try:
            cached = HEAD_BLOCKS.get(headers)
        except TypeError:
            cacheable = False
        else:
            if cached is not None:
                return cached  # type: ignore[no-any-return]  # the memo holds HeaderBlocks
    block = check_headers(headers)
    if cacheable and len(block[0]) <= _MAX_CACHED_BLOCK:
        HEAD_BLOCKS.remember(headers, block)
    return block


def check_headers(headers: Any) -> HeaderBlock:
    """The header lines of ``headers`` (an iterable of (name, value) byte strings), checked;
    RuntimeError, saying what is wrong, for anything that cannot go on the wire."""
    parts: List[bytes] = []
    content_length: Optional[int] = None
    close = False
    lines = 0
    try:
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                # 1*DIGIT (OWS around it allowed): not whatever int() reads ("1_0", "+5").
                digits = value.strip(b" \t")
                if not digits.isdigit():
                    raise ValueError
                length = int(digits)
                if content_length is not None and length != content_length:
                    # Which body length the app means is anyone's guess: not ours to pick.
                    raise RuntimeError("Conflicting Content-Length response headers in %r" % (headers,))
                content_length = length
                continue  # written by us, once, in canonical form
            elif lname == b"transfer-encoding":
                continue  # we frame the body ourselves
            elif lname == b"connection":
                if value.lower().find(b"close") >= 0:
                    close = True
                continue
            if name not in _GOOD_NAMES:
                if TOKEN.fullmatch(name) is None:
                    raise RuntimeError("Invalid response header name %r" % (name,))
                _GOOD_NAMES.remember(bytes(name), True)
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        block = b"".join(parts)
    except (TypeError, AttributeError):
        raise RuntimeError("ASGI response headers must be an iterable of [name, value] byte strings, got %r"
                           % (headers,)) from None
    except ValueError:
        raise RuntimeError("Invalid Content-Length response header in %r" % (headers,)) from None
    # Every line given ends in our CRLF; any other CR or LF would be response splitting, and no
    # other control character is a field value's either (RFC 9110 5.5: VCHAR, obs-text, SP and
    # HTAB; a strict client refuses the response). Counting, then one pass over the block, at C
    # speed, instead of a regex per header (and the block is remembered).
    if block.count(b"\n") != lines or block.count(b"\r") != lines \
            or block.translate(_CONTROL_TO_NUL).find(b"\0") >= 0:
        raise RuntimeError("Invalid response header value (a control character) in %r" % (headers,))
    return block, content_length, close


_FRAMING_NAMES = (b"content-length", b"transfer-encoding", b"connection")


def response_pairs(headers: Any) -> List[Tuple[bytes, bytes]]:
    """``headers`` checked as ``check_headers`` does, as (name, value) pairs without the framing
    headers: for a head another library writes (the WebSocket handshake's 101)."""
    try:
        pairs = [(bytes(name), bytes(value)) for name, value in headers] if headers else []
    except (TypeError, ValueError):
        raise RuntimeError("ASGI response headers must be an iterable of [name, value] byte strings, got %r"
                           % (headers,)) from None
    check_headers(pairs)
    return [(name, value) for name, value in pairs if name.lower() not in _FRAMING_NAMES]
