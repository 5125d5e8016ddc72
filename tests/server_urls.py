"""URLs of the server processes: the test URLs, each response naming the process that served it."""

import os
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tests.urls import urlpatterns  # noqa: F401  (served as is)


def served_by(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        response["X-Served-By"] = str(os.getpid())
        return response

    return middleware
