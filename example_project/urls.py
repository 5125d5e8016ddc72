import importlib.util

from django.apps import apps
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import include, path

from example_project.llm import anthropic, views

# Each client's base URL, for the openai package: http://HOST/v1/clients/<slug>
client_urls = [
    path("chat/completions", views.ChatCompletionView.as_view(), name="chat-completions"),
    path("models", views.ModelListView.as_view(), name="models"),
    # The calling key's client, limits, budgets and usage (as OpenRouter's GET /api/v1/key).
    path("key", views.KeyView.as_view(), name="key-info"),
]

urlpatterns = [
    # The kwarg is DRF_LLM_KEYS["CLIENT_URL_KWARG"]: the authentication class reads it.
    path("v1/clients/<slug:llm_client>/", include(client_urls)),
    # Anthropic's Messages API; the anthropic package's base_url is http://HOST/anthropic/clients/<slug>
    path(
        "anthropic/clients/<slug:llm_client>/v1/messages", anthropic.MessagesView.as_view(), name="messages"
    ),
    path("admin/", admin.site.urls),
    # The admin's CSS and scripts, also with DEBUG off: this project only ever runs locally.
    path("static/<path:path>", serve, {"insecure": True}),  # STATIC_URL
]

# The same endpoints through Django Ninja, async: http://HOST/ninja/v1/clients/<slug>, where
# django-ninja is installed (pip install django-ninja); the example needs no more
# than the library otherwise.
if importlib.util.find_spec("ninja") is not None:
    from example_project.llm import ninja_api

    urlpatterns.insert(1, path("ninja/v1/", ninja_api.api.urls))

# The OpenAPI document, and Swagger UI to read it and try a key, where settings.py installed
# drf-spectacular and its sidecar.
if apps.is_installed("drf_spectacular_sidecar"):
    from example_project.llm import api_schema

    urlpatterns += api_schema.urlpatterns

handler404 = "example_project.llm.errors.not_found"
handler500 = "example_project.llm.errors.server_error"
