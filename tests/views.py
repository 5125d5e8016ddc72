import time
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from drf_llm_keys import get_client_model, limits, usage
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.permissions import HasScopes, require_model
from drf_llm_keys.throttling import APIKeyRateThrottle, TokenRateThrottle


class DefaultEcho(APIView):
    """Uses DEFAULT_AUTHENTICATION_CLASSES (ours first, then sessions)."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        prefix = getattr(request.auth, "prefix", None)
        return Response({"user": request.user.get_username() or None, "key": prefix})


class PerViewEcho(DefaultEcho):
    authentication_classes = [LLMClientAPIKeyAuthentication]
    permission_classes = [AllowAny]


class ClientFromMethodEcho(DefaultEcho):
    authentication_classes = [LLMClientAPIKeyAuthentication]

    def get_llm_client(self) -> Any:
        return get_object_or_404(get_client_model(), name=self.kwargs["name"])


class ClientValueFromMethodEcho(ClientFromMethodEcho):
    """``get_llm_client()`` answering with the client's lookup value, not the instance."""

    def get_llm_client(self) -> Any:
        return super().get_llm_client().slug


class WhoAmI(APIView):
    """Not an LLM client's view: other authenticators decide."""

    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response({"user": request.user.get_username()})


class ScopedEcho(APIView):
    """Needs the scopes chat and files; answers with what the key holds (from the cache)."""

    authentication_classes = [LLMClientAPIKeyAuthentication]
    permission_classes = [HasScopes]
    required_scopes = ["chat", "files"]

    def get(self, request: Request, **kwargs: Any) -> Response:
        if request.auth is None:
            return Response({"key": None})
        return Response(
            {
                "key": request.auth.prefix,
                "scopes": request.auth.scopes,
                "allowed_models": request.auth.allowed_models,
                "has_chat": request.auth.has_scopes("chat"),
            }
        )


class ScopedDefaultEcho(DefaultEcho):
    """DEFAULT_AUTHENTICATION_CLASSES (ours, then sessions) with HasScopes."""

    permission_classes = [HasScopes]
    required_scopes = ["chat"]


class ModelEcho(APIView):
    """``?model=NAME``: refused with 403 when the key may not use that model."""

    authentication_classes = [LLMClientAPIKeyAuthentication]

    def get(self, request: Request, **kwargs: Any) -> Response:
        model = request.query_params.get("model", "")
        require_model(request, model)
        return Response({"model": model})


class TokenEcho(PerViewEcho):
    """Reports ``?prompt=N&completion=M`` tokens as a completion's usage; budgeted per key
    in requests and tokens."""

    throttle_classes = [APIKeyRateThrottle, TokenRateThrottle]

    def get(self, request: Request, **kwargs: Any) -> Response:
        usage.record_tokens(request, **tokens_asked(request))
        return super().get(request, **kwargs)


class StreamedTokenEcho(TokenEcho):
    """The same, reported when the streamed body ends: after the view has returned."""

    def get(self, request: Request, **kwargs: Any) -> StreamingHttpResponse:  # type: ignore[override]
        def body() -> Iterator[bytes]:
            yield b"streamed "
            yield b"reply"
            usage.record_tokens(request, **tokens_asked(request))

        return StreamingHttpResponse(body())


class MeteredTokenEcho(TokenEcho):
    """``?chunks=N`` chunks of ``size`` bytes (1,024 by default), one completion token each,
    through ``usage.MeteredStream`` with ``?prompt=P`` prompt tokens; ``?fail_at=K`` makes
    the producer raise instead of sending chunk K."""

    def get(self, request: Request, **kwargs: Any) -> StreamingHttpResponse:  # type: ignore[override]
        chunks, size = int(request.query_params["chunks"]), int(request.query_params.get("size", 1024))
        fail_at = int(request.query_params.get("fail_at", -1))

        def pairs() -> Iterator[tuple[bytes, int]]:
            for number in range(chunks):
                if number == fail_at:
                    raise RuntimeError("the model broke off")
                yield b"x" * size, 1

        prompt = int(request.query_params.get("prompt", 0))
        model = request.query_params.get("model")
        return StreamingHttpResponse(usage.MeteredStream(request, pairs(), prompt_tokens=prompt, model=model))


def tokens_asked(request: Request) -> dict[str, int]:
    return {
        "prompt_tokens": int(request.query_params.get("prompt", 0)),
        "completion_tokens": int(request.query_params.get("completion", 0)),
    }


class AdmittedEcho(PerViewEcho):
    """Admitted by ``limits.admit`` for ``?model=M&prompt=P&max_tokens=N``, then records
    ``?completion=C`` tokens; ``?stream=1`` streams the answer (settled when it closes),
    ``?fail=1`` raises after the admission, ``?delay=S`` waits S seconds before each chunk."""

    def get(self, request: Request, **kwargs: Any) -> Any:
        params = request.query_params
        model = params.get("model")
        prompt = int(params.get("prompt", 0))
        limits.admit(request, model=model, prompt_tokens=prompt, max_tokens=int(params.get("max_tokens", 0)))
        if params.get("fail"):
            raise RuntimeError("the upstream broke")
        if params.get("stream"):
            delay = float(params.get("delay", 0))

            def pairs() -> Iterator[tuple[bytes, int]]:
                for _ in range(int(params.get("completion", 0))):
                    time.sleep(delay)
                    yield b"x", 1

            return StreamingHttpResponse(
                usage.MeteredStream(request, pairs(), prompt_tokens=prompt, model=model)
            )
        usage.record_tokens(
            request, prompt_tokens=prompt, completion_tokens=int(params.get("completion", 0)), model=model
        )
        return super().get(request, **kwargs)
