from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("clients/<str:llm_client>/echo/", views.PerViewEcho.as_view()),
    path("default/clients/<str:llm_client>/echo/", views.DefaultEcho.as_view()),
    path("by-method/<str:name>/echo/", views.ClientFromMethodEcho.as_view()),
    path("whoami/", views.WhoAmI.as_view()),
    path("scoped/<str:llm_client>/echo/", views.ScopedEcho.as_view()),
    path("scoped-default/<str:llm_client>/echo/", views.ScopedDefaultEcho.as_view()),
    path("models/<str:llm_client>/echo/", views.ModelEcho.as_view()),
    path("clients/<str:llm_client>/tokens/", views.TokenEcho.as_view()),
    path("clients/<str:llm_client>/tokens/stream/", views.StreamedTokenEcho.as_view()),
]
