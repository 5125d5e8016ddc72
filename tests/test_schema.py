from __future__ import annotations

from typing import Any

import pytest
from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from drf_spectacular.validation import validate_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from drf_llm_keys.authentication import LLMClientAPIKeyAuthentication
from drf_llm_keys.permissions import HasScopes

# Not imported from drf_llm_keys.contrib.spectacular: the app must register it by itself.
AUTHORIZATION_SCHEME = "LLMClientAPIKeyAuthorization"
HEADER_SCHEME = "LLMClientAPIKeyHeader"
EITHER_SCHEME = [{AUTHORIZATION_SCHEME: []}, {HEADER_SCHEME: []}]


class Echo(APIView):
    authentication_classes = [LLMClientAPIKeyAuthentication]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, llm_client: str) -> Response:
        return Response({})


class CustomAuthentication(LLMClientAPIKeyAuthentication):
    pass


class CustomEcho(Echo):
    authentication_classes = [CustomAuthentication]


class SessionOnly(Echo):
    authentication_classes = [SessionAuthentication]


class ScopedEcho(Echo):
    permission_classes = [HasScopes]
    required_scopes = ["chat", "files"]


patterns = [
    path("clients/<str:llm_client>/echo/", Echo.as_view()),
    path("scoped/<str:llm_client>/echo/", ScopedEcho.as_view()),
    path("custom/<str:llm_client>/echo/", CustomEcho.as_view()),
    path("session/<str:llm_client>/echo/", SessionOnly.as_view()),
]


def generate() -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator(patterns=patterns).get_schema(request=None, public=True)
    return schema


def security_of(schema: dict[str, Any], route: str) -> list[dict[str, list[Any]]]:
    security: list[dict[str, list[Any]]] = schema["paths"][route]["get"]["security"]
    return security


def test_the_schema_shows_the_bearer_and_header_schemes():
    schemes = generate()["components"]["securitySchemes"]
    assert schemes[AUTHORIZATION_SCHEME]["type"] == "http"
    assert schemes[AUTHORIZATION_SCHEME]["scheme"] == "bearer"
    assert {k: schemes[HEADER_SCHEME][k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_an_operation_accepts_either_scheme():
    security = security_of(generate(), "/clients/{llm_client}/echo/")
    assert all(requirement in security for requirement in EITHER_SCHEME)
    assert not any(len(requirement) > 1 for requirement in security)  # alternatives, never both


def test_subclasses_of_the_authenticator_get_schemes_of_their_own():
    schema = generate()
    security = security_of(schema, "/custom/{llm_client}/echo/")
    assert {"CustomAuthenticationAuthorization": []} in security
    assert {"CustomAuthenticationHeader": []} in security
    schemes = schema["components"]["securitySchemes"]
    assert schemes["CustomAuthenticationHeader"] == schemes[HEADER_SCHEME]


def test_generating_the_schema_warns_about_nothing(capsys):
    generate()
    assert "Warning" not in capsys.readouterr().err


def test_views_without_the_authenticator_do_not_list_the_schemes():
    security = security_of(generate(), "/session/{llm_client}/echo/")
    assert not any(AUTHORIZATION_SCHEME in r or HEADER_SCHEME in r for r in security)


def test_the_schemes_follow_the_keyword_and_header_settings(settings):
    settings.DRF_LLM_KEYS = {"AUTH_KEYWORDS": ("Token",), "HEADER": "X-LLM-Key"}
    schemes = generate()["components"]["securitySchemes"]
    authorization = schemes[AUTHORIZATION_SCHEME]
    assert (authorization["type"], authorization["in"], authorization["name"]) == (
        "apiKey",
        "header",
        "Authorization",
    )
    assert "Token <key>" in authorization["description"]
    assert schemes[HEADER_SCHEME]["name"] == "X-LLM-Key"


@pytest.mark.parametrize("drf_llm_keys", [{}, {"AUTH_KEYWORDS": ("Token",)}])
def test_the_schema_is_valid_openapi(settings, drf_llm_keys):
    settings.DRF_LLM_KEYS = drf_llm_keys
    validate_schema(generate())


# --- scopes ------------------------------------------------------------------------------


def test_openapi_3_0_lists_no_scopes_for_these_schemes():
    # 3.0 allows scopes in a requirement only for oauth2 and openIdConnect schemes.
    assert security_of(generate(), "/scoped/{llm_client}/echo/") == EITHER_SCHEME


def test_openapi_3_1_lists_the_views_required_scopes():
    with patched_settings({"OAS_VERSION": "3.1.0"}):
        schema = generate()
        validate_schema(schema)
    assert security_of(schema, "/scoped/{llm_client}/echo/") == [
        {AUTHORIZATION_SCHEME: ["chat", "files"]},
        {HEADER_SCHEME: ["chat", "files"]},
    ]
    # A view without HasScopes needs none (AllowAny adds the anonymous {} requirement).
    assert security_of(schema, "/clients/{llm_client}/echo/") == [*EITHER_SCHEME, {}]


def test_the_schemes_say_that_keys_may_be_limited_to_scopes_and_models():
    schemes = generate()["components"]["securitySchemes"]
    for name in (AUTHORIZATION_SCHEME, HEADER_SCHEME):
        assert "limited to scopes and to models" in schemes[name]["description"]
        assert "403" in schemes[name]["description"]
