"""Server B of bench/fanout.py: the smallest Django Channels project (no database, no apps of
its own), its channel layer on channels_redis at FANOUT_REDIS_URL with prefix FANOUT_PREFIX."""

import os

SECRET_KEY = "fanout-bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES = {}
USE_TZ = True
ROOT_URLCONF = "djbench.urls"
ASGI_APPLICATION = "djbench.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("FANOUT_REDIS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("FANOUT_PREFIX", "asgi"),
        },
    },
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
