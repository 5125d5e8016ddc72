"""URLs of the server processes: the test URLs, each response naming the process that served it."""

import os
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from tests.urls import urlpatterns  # noqa: F401  (served as is)


@sync_and_async_middleware
def served_by(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    # Async under ASGI as well: async views stay on the event loop (tests/test_asgi_servers.py).
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            response: HttpResponse = await get_response(request)
            response["X-Served-By"] = str(os.getpid())
            return response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        response: HttpResponse = get_response(request)
        response["X-Served-By"] = str(os.getpid())
        return response

    return middleware
