"""Server A of bench/fanout.py: our worker, a channel-style consumer that accepts each WebSocket
and joins it to the group ``bench``, nothing else. The ticker's ``{'text': ...}`` messages to the
group go straight to every member's socket.

    gunicorn ours:consumer -k asgiworker.ASGIWORKER --workers 4 \\
        -e ASGIWORKER_CHANNEL_LAYER=redis://127.0.0.1:PORT/0 -e ASGIWORKER_CHANNEL_PREFIX=fanA
"""

from asgiworker.channels import Group

bench = Group("bench")


def consumer(message):
    if message["type"] == "websocket.connect":
        message["reply_channel"].send({"accept": True})
        bench.add(message["reply_channel"])
