"""gunicorn djbench.asgi:application -k uvicorn_worker.UvicornWorker --workers 4"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbench.settings")

import django  # noqa: E402

django.setup()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from djbench.consumers import BenchConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": BenchConsumer.as_asgi(),
})
