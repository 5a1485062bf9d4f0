"""HTTP/1.1 on httptools: one ``HttpConnection`` per socket, each request an ASGI cycle run as a
real asyncio Task. The modules, and a request's path through them: docs/architecture.md.

    state       what the connections of a worker share; what a connection offers the worker
    connection  the transport's callbacks, pipelining, keep-alive, timeouts, upgrade
    reader      the parser's callbacks: limits, checks, the scope
    cycle       one request's receive/send, and its response phase
    writer      the connection's writes (coalescing, large bodies) and a response's bytes
    framing     how a response body is delimited: one pure decision

What HTTP and WebSocket share (header checks, error responses, flow control) is in
``asgiworker.wire``.
"""

from asgiworker.errors import ClientDisconnected
from asgiworker.http.connection import HTTP_EXTENSIONS, HttpConnection
from asgiworker.http.cycle import RESPONSE_COMPLETE, RequestCycle
from asgiworker.http.reader import BODY_HIGH_WATER, MAX_PIPELINED
from asgiworker.http.state import ASGIApp, ServedConnection, ServerState
from asgiworker.http.writer import FLUSH_SIZE
from asgiworker.wire.lines import error_response

__all__ = [
    "ASGIApp", "BODY_HIGH_WATER", "ClientDisconnected", "FLUSH_SIZE", "HTTP_EXTENSIONS", "MAX_PIPELINED",
    "RESPONSE_COMPLETE", "HttpConnection", "RequestCycle", "ServedConnection", "ServerState", "error_response",
]
