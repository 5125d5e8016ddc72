"""``LimitsMiddleware``: the part of limits that runs around the view.

It writes the headers the throttles and limits noted on the request (``headers``), and
settles the request's admission (``limits.admit``) once the response has ended: at once for
a plain response, when the server closes a streamed one (its last chunk sent, or the client
gone), and on an exception. Sync and async stacks alike::

    MIDDLEWARE = [..., "drf_llm_keys.middleware.LimitsMiddleware"]
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from . import headers, limits, usage


class LimitsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        setattr(request, limits.MIDDLEWARE_ATTRIBUTE, True)
        try:
            response: HttpResponseBase = self.get_response(request)
        except BaseException:
            limits.settle(request)
            raise
        return finish(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        setattr(request, limits.MIDDLEWARE_ATTRIBUTE, True)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        try:
            response = await get_response(request)
        except BaseException:  # a client gone before the view answered cancels it
            limits.settle(request)
            raise
        return finish(request, response)


def finish(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    headers.add_headers(request, response)
    if getattr(request, usage.ADMISSION_ATTRIBUTE, None) is None:
        return response
    if isinstance(response, StreamingHttpResponse):
        # Django closes what it streams when the response is closed: settled then.
        content = response.streaming_content
        settling = _AsyncSettling if response.is_async else _Settling
        response.streaming_content = settling(content, request)
    else:
        limits.settle(request)
    return response


class _Settling:
    def __init__(self, content: Any, request: HttpRequest) -> None:
        self.content = content
        self.request = request

    def __iter__(self) -> Iterator[Any]:
        return iter(self.content)

    def close(self) -> None:
        limits.settle(self.request)


class _AsyncSettling(_Settling):
    __iter__ = None  # type: ignore[assignment]  # async only: Django tries iter() first

    def __aiter__(self) -> AsyncIterator[Any]:
        return aiter(self.content)
