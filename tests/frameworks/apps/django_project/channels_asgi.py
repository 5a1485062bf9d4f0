"""The same Django project behind a Channels ProtocolTypeRouter, as Channels' docs set it up.

HTTP goes to a Channels HTTP consumer for ``/events/`` and to Django for everything else;
WebSocket goes through AuthMiddlewareStack (cookies, session, user) to the consumers.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.frameworks.apps.django_project.settings")

# Before anything imports models (AuthMiddlewareStack does): this sets Django up.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from tests.frameworks.apps.django_project import consumers  # noqa: E402

application = ProtocolTypeRouter({
    "http": URLRouter([
        path("events/", consumers.EventsConsumer.as_asgi()),
        re_path(r"", django_asgi_app),
    ]),
    "websocket": AuthMiddlewareStack(URLRouter([
        path("ws/chat/<str:room>/", consumers.ChatConsumer.as_asgi()),
        path("ws/echo/", consumers.EchoConsumer.as_asgi()),
        path("ws/refuse/", consumers.RefusingConsumer.as_asgi()),
    ])),
})
