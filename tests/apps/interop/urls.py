"""No Django views: HTTP is answered by channels_app.health."""

urlpatterns: list = []
