"""One trivial view behind each authentication under test, plus the floor."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.contrib.auth import get_user_model
from django.core.cache import cache
from knox.auth import TokenAuthentication as KnoxTokenAuthentication  # type: ignore[import-untyped]
from ninja import NinjaAPI
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, TokenAuthentication, get_authorization_header
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.permissions import HasAPIKey

from drf_llm_keys import limits
from drf_llm_keys.adrf import DecideOnEventLoop
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.ninja import LLMClientAPIKeyAuth
from drf_llm_keys.throttling import APIKeyRateThrottle

FLOOR_KEYWORD = b"floor"


def floor_cache_name(digest: str) -> str:
    return f"floor:{digest}"


class FloorAuthentication(BaseAuthentication):
    """The least a cache-backed key check can do: one SHA-256 and one cache GET.

    It checks nothing else (no revocation, no binding, no owner), so no real
    authentication can be cheaper; it sets the target the warm path is held to.
    """

    user = get_user_model()(username="floor", is_active=True)

    def authenticate(self, request: Request) -> tuple[Any, str] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != FLOOR_KEYWORD:
            return None
        digest = hashlib.sha256(parts[1]).hexdigest()
        if cache.get(floor_cache_name(digest)) is None:
            raise exceptions.AuthenticationFailed("Invalid key.")
        return self.user, digest

    def authenticate_header(self, request: Request) -> str:
        return "Floor"


class Trivial(APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]

    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response({"ok": True})


class Floor(Trivial):
    authentication_classes = [FloorAuthentication]
    permission_classes = [IsAuthenticated]


class Ours(Trivial):
    # The class itself refuses on a protected client and lets a public one through.
    authentication_classes = [LLMClientAPIKeyAuthentication]


class OursWhichWorker(Ours):
    """Says which process answered: the revocation step warms every worker."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response({"pid": os.getpid()})


class OursThrottled(Ours):
    """Throttled per key (``THROTTLE_RATE``, set by the endpoint): the throttle reuses the
    client entry the authentication found."""

    throttle_classes = [APIKeyRateThrottle]


class OursAdmitted(Ours):
    """Admitted under the key's limits and settled, as ``LimitsMiddleware`` settles a plain
    response (the benchmark runs no middleware)."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        setattr(request._request, limits.MIDDLEWARE_ATTRIBUTE, True)
        limits.admit(request, model="bench", prompt_tokens=100, max_tokens=100)
        response = super().get(request, **kwargs)
        limits.settle(request._request)
        return response


class DrfToken(Trivial):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]


class Knox(Trivial):
    authentication_classes = [KnoxTokenAuthentication]
    permission_classes = [IsAuthenticated]


class ApiKey(Trivial):
    permission_classes = [HasAPIKey]


# --- async views: adrf, and a Django Ninja API ---------------------------------------------


class AsyncTrivial(AsyncAPIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]

    async def get(self, request: Request, **kwargs: Any) -> Response:
        return Response({"ok": True})


class AsyncOurs(DecideOnEventLoop, AsyncTrivial):
    """The key decided on the event loop, before adrf's dispatch."""

    authentication_classes = [LLMClientAPIKeyAuthentication]


class AsyncOursInAdrfThread(AsyncTrivial):
    """adrf as it is: our authentication in the thread adrf runs initial() in."""

    authentication_classes = [LLMClientAPIKeyAuthentication]


ninja_api = NinjaAPI(urls_namespace="benchmarks-ninja", docs_url=None)


@ninja_api.get("/none/")
async def ninja_none(request: Any) -> dict[str, bool]:
    return {"ok": True}


@ninja_api.get("/ours/{llm_client}/", auth=LLMClientAPIKeyAuth())
async def ninja_ours(request: Any, llm_client: str) -> dict[str, bool]:
    return {"ok": True}
