urlpatterns = []  # every HTTP request is a 404: the runner only checks that the worker answers
