"""A small Django project (with a Channels routing) served by the framework tests.

Two entry points share one settings module:

- ``asgi:application``: plain Django, ``django.core.asgi.get_asgi_application()``;
- ``channels_asgi:application``: a Channels ``ProtocolTypeRouter`` (HTTP to Django and to a
  Channels HTTP consumer, WebSocket to consumers).

Nothing here needs a database: sessions live in signed cookies.
"""
