"""Settings for the test project; valid on Django 4.2 and 5.x.

No database is configured (Django's dummy backend): sessions are signed cookies, and nothing else
touches the ORM. The payload for the FileResponse test is a file the test module writes and names
in ``DJANGO_TEST_PAYLOAD``, so that the test knows exactly which bytes to expect.
"""

from __future__ import annotations

import os

SECRET_KEY = "django-test-project-not-a-secret-" + "x" * 20
DEBUG = False  # production behaviour: plain 404/500 pages, no technical traceback in responses
ALLOWED_HOSTS = ["*"]

ROOT_URLCONF = "tests.frameworks.apps.django_project.urls"
USE_TZ = True

INSTALLED_APPS = [
    # contenttypes and auth for Channels' AuthMiddlewareStack (AnonymousUser); sessions for the
    # session middleware. None of them is asked for a table: no user ever logs in.
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    # A MiddlewareMixin with a sync process_response: the chain stays async, the hook runs in a
    # thread (asgiref sync_to_async), as in most real projects.
    "tests.frameworks.apps.django_project.middleware.ProcessResponseHeaderMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Innermost and async-capable: it sits right above the async handler, so it runs as a coroutine.
    "tests.frameworks.apps.django_project.middleware.AsyncCapableHeaderMiddleware",
]

SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": False,
        "OPTIONS": {},
    },
]

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

PAYLOAD_FILE = os.environ.get("DJANGO_TEST_PAYLOAD", "")

# Django's default logging sends request errors only to mail_admins when DEBUG is off: nothing
# would reach the Gunicorn log. Send them to stderr, as deployments do, so that a failing check
# shows Django's side of the story (and the deliberate 500 leaves one traceback in each log).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}
