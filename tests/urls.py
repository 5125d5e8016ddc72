from django.contrib import admin
from django.urls import path

from drf_llm_keys.views import KeyInfoView

from . import async_views, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("clients/<str:llm_client>/echo/", views.PerViewEcho.as_view()),
    path("default/clients/<str:llm_client>/echo/", views.DefaultEcho.as_view()),
    path("by-method/<str:name>/echo/", views.ClientFromMethodEcho.as_view()),
    path("by-method-value/<str:name>/echo/", views.ClientValueFromMethodEcho.as_view()),
    path("whoami/", views.WhoAmI.as_view()),
    path("scoped/<str:llm_client>/echo/", views.ScopedEcho.as_view()),
    path("scoped-default/<str:llm_client>/echo/", views.ScopedDefaultEcho.as_view()),
    path("models/<str:llm_client>/echo/", views.ModelEcho.as_view()),
    path("clients/<str:llm_client>/tokens/", views.TokenEcho.as_view()),
    path("clients/<str:llm_client>/tokens/stream/", views.StreamedTokenEcho.as_view()),
    path("clients/<str:llm_client>/tokens/metered/", views.MeteredTokenEcho.as_view()),
    path("clients/<str:llm_client>/key/", KeyInfoView.as_view()),
    path("clients/<str:llm_client>/admitted/", views.AdmittedEcho.as_view()),
]

# The async front doors over the same decision (tests/async_views.py).
urlpatterns += [
    path("adrf/clients/<str:llm_client>/echo/", async_views.AdrfEcho.as_view()),
    path("async/clients/<str:llm_client>/echo/", async_views.AsyncEcho.as_view()),
    path("async/scoped/<str:llm_client>/echo/", async_views.AsyncScopedEcho.as_view()),
    path("async/models/<str:llm_client>/echo/", async_views.AsyncModelEcho.as_view()),
    path("async/limited/<str:llm_client>/echo/", async_views.AsyncLimitedEcho.as_view()),
    path("async/tokens/<str:llm_client>/echo/", async_views.AsyncTokenEcho.as_view()),
    path("ninja/", async_views.api.urls),
    path("ninja-routed/", async_views.routed_api.urls),
    path("ninja-bare/", async_views.bare_api.urls),
]
