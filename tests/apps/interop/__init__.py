"""Apps for the channel layer's Redis tests (tests/test_channels_redis_interop.py,
tests/test_layer_faults.py).

- ``settings`` and ``channels_app``: a small Django project whose Channels consumer
  (``RoomConsumer``) is on ``channels_redis`` at ``INTEROP_REDIS_URL``, prefix ``asgi``; served by
  gunicorn with uvicorn-worker.
- ``ours``: a channel-style consumer for asgiworker on the same Redis (ASGIWORKER_CHANNEL_LAYER),
  the same room protocol, plus HTTP routes that call the layer and report what happened.

The room protocol, on both sides: a socket on ``/ws/<room>/`` joins group ``<room>``, then sends
its client ``{"hello": <its channel name>, "pid": <worker pid>}`` (so a client that has read it
knows the membership is in Redis). A ``chat.message`` event reaches the client as its bare
``text``. Client text that is JSON ``{"to": name, "text": t}`` is sent to that one channel;
any other text is ``group_send(room, {"type": "chat.message", "text": text})``.
"""
