"""drf-spectacular: show the key schemes in generated OpenAPI schemas.

Imported by ``apps.DrfLlmKeysConfig.ready()`` only when ``drf_spectacular`` is in INSTALLED_APPS;
subclassing the extension is what registers it.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.settings import spectacular_settings

from ..authentication import LLMClientAPIKeyAuthentication
from ..conf import conf
from ..permissions import HasScopes, required_scopes

# Said in each scheme's description: where scopes and models show, and how a refusal looks.
RESTRICTIONS = (
    " A key may be limited to scopes and to models: an operation that needs scopes the key "
    "lacks, or a model it may not use, is refused with 403."
)


class LLMClientAPIKeyScheme(OpenApiAuthenticationExtension):
    """Two security schemes, ``LLMClientAPIKeyAuthorization`` and ``LLMClientAPIKeyHeader``
    (``<SubclassName>Authorization`` and ``<SubclassName>Header`` for a subclass)."""

    target_class = LLMClientAPIKeyAuthentication
    match_subclasses = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        # drf-spectacular keys components by name and class: a subclass needs names of its own.
        cls = type(target)
        stem = "LLMClientAPIKey" if cls is LLMClientAPIKeyAuthentication else cls.__name__
        self.name = [f"{stem}Authorization", f"{stem}Header"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Either header will do: two alternatives, not one requirement with both.
        scopes = operation_scopes(auto_schema.view)
        return [{name: scopes} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        keyword = conf.AUTH_KEYWORDS[0]
        if keyword.lower() == "bearer":
            authorization = {
                "type": "http",
                "scheme": "bearer",
                "description": "The LLM client's API key as `Authorization: Bearer <key>`." + RESTRICTIONS,
            }
        else:  # OpenAPI's http schemes know no custom keywords: describe the header instead.
            authorization = {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": f"The LLM client's API key as `Authorization: {keyword} <key>`."
                + RESTRICTIONS,
            }
        header = {
            "type": "apiKey",
            "in": "header",
            "name": conf.HEADER,
            "description": f"The LLM client's API key as `{conf.HEADER}: <key>`." + RESTRICTIONS,
        }
        return [authorization, header]


def operation_scopes(view: Any) -> list[str]:
    """The view's required scopes, where OpenAPI lets an apiKey or http scheme list them.

    OpenAPI 3.1 allows any scheme's requirement to name roles; 3.0 (drf-spectacular's
    default ``OAS_VERSION``) allows scopes for oauth2 and openIdConnect only, so there the
    list stays empty and the scheme's description says what a refusal looks like.
    """
    if spectacular_settings.OAS_VERSION.startswith("3.0"):
        return []
    if not any(isinstance(permission, HasScopes) for permission in view.get_permissions()):
        return []
    return required_scopes(view)
