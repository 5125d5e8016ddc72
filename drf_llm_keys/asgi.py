"""Django's ASGI application, which writes this process's usage counts when the server stops.

uvicorn ends its process by raising again the signal it stopped on (SIGTERM, SIGINT) once
it has shut down gracefully, so ``atexit`` never runs there, nor do the usage counts waiting
in the process get written (``usage``). What uvicorn (and gunicorn's uvicorn worker) does
run before that is the ASGI ``lifespan`` shutdown, which Django's own application does not
speak. This one does, and hands everything else to Django's::

    # asgi.py
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from drf_llm_keys.asgi import get_asgi_application
    application = get_asgi_application()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application as django_asgi_application

# As Django's ASGIHandler types them.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class WritesUsageAtShutdown:
    """An ASGI application around ``app`` that answers the lifespan protocol: at shutdown,
    the usage counts waiting in this process are written (``usage.counter``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        from . import usage  # the models it imports need the app registry django.setup() filled

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await sync_to_async(usage.counter.flush_at_exit, thread_sensitive=False)()
                await send({"type": "lifespan.shutdown.complete"})
                return


def get_asgi_application() -> WritesUsageAtShutdown:
    """Django's ``get_asgi_application()`` (which sets Django up), ready for lifespan."""
    return WritesUsageAtShutdown(django_asgi_application())
