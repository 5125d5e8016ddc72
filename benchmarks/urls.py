from django.urls import path

from . import views

urlpatterns = [
    path("none/", views.Trivial.as_view()),
    path("floor/", views.Floor.as_view()),
    path("ours/<str:llm_client>/", views.Ours.as_view()),
    path("ours-throttled/<str:llm_client>/", views.OursThrottled.as_view()),
    path("ours-admitted/<str:llm_client>/", views.OursAdmitted.as_view()),
    path("ours-pid/<str:llm_client>/", views.OursWhichWorker.as_view()),
    path("drf-token/", views.DrfToken.as_view()),
    path("knox/", views.Knox.as_view()),
    path("api-key/", views.ApiKey.as_view()),
    path("async/none/", views.AsyncTrivial.as_view()),
    path("async/ours/<str:llm_client>/", views.AsyncOurs.as_view()),
    path("async/ours-in-thread/<str:llm_client>/", views.AsyncOursInAdrfThread.as_view()),
    path("ninja/", views.ninja_api.urls),
]
