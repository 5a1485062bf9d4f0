"""What every protocol on our transports shares (HTTP and WebSocket alike): the bytes of HTTP we
check ourselves (grammar), status and length lines and the server's own error response (lines),
the one check of every response head (headers), flow control both ways (flow), and the one bounded
memo table (memo). It imports nothing of ours but itself: http and websocket both build on it.
"""
