"""URLs of the test project (see views.py)."""

from __future__ import annotations

from django.urls import path

from tests.frameworks.apps.django_project import views

urlpatterns = [
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("sync-calls-async/", views.sync_calls_async),
    path("async-calls-sync/", views.async_calls_sync),
    path("slow/", views.slow_sync),
    path("meta/<str:word>/", views.meta),
    path("echo/", views.echo_json),
    path("boom/", views.boom),
    path("stream/sync/", views.stream_sync),
    path("stream/async/", views.stream_async),
    path("stream/forever/", views.stream_forever),
    path("stream/state/", views.stream_state),
    path("file/", views.file_view),
    path("counter/", views.counter),
    path("form/", views.form),
]
