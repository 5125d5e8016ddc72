from django.urls import include, path

from example_project.llm import views

# Each client's base URL, for the openai package: http://HOST/v1/clients/<slug>
client_urls = [
    path("chat/completions", views.ChatCompletionView.as_view(), name="chat-completions"),
    path("models", views.ModelListView.as_view(), name="models"),
]

urlpatterns = [
    # The kwarg is DRF_LLM_KEYS["CLIENT_URL_KWARG"]: the authentication class reads it.
    path("v1/clients/<slug:llm_client>/", include(client_urls)),
]

handler404 = "example_project.llm.errors.not_found"
handler500 = "example_project.llm.errors.server_error"
