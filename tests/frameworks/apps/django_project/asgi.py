"""Plain Django over ASGI: what ``django-admin startproject`` writes into asgi.py."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.frameworks.apps.django_project.settings")

application = get_asgi_application()
