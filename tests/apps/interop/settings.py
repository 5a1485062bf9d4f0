"""Django settings for the Channels side of the interop test: nothing but the channel layer,
on channels_redis at ``INTEROP_REDIS_URL`` with prefix ``asgi`` (channels_redis's default)."""

from __future__ import annotations

import os

SECRET_KEY = "interop-test-project-not-a-secret-" + "x" * 20
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS: list = []
ROOT_URLCONF = "tests.apps.interop.urls"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0")], "prefix": "asgi"},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}
