from typing import Any

from django.shortcuts import get_object_or_404
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from drf_llm_keys import get_client_model
from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication


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


class WhoAmI(APIView):
    """Not an LLM client's view: other authenticators decide."""

    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response({"user": request.user.get_username()})
