"""drf-spectacular: show the key schemes in generated OpenAPI schemas.

Imported by ``apps.DrfLlmKeysConfig.ready()`` only when ``drf_spectacular`` is in INSTALLED_APPS;
subclassing the extension is what registers it.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from ..authentication import LLMClientAPIKeyAuthentication
from ..conf import conf


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
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        keyword = conf.AUTH_KEYWORDS[0]
        if keyword.lower() == "bearer":
            authorization = {
                "type": "http",
                "scheme": "bearer",
                "description": "The LLM client's API key as `Authorization: Bearer <key>`.",
            }
        else:  # OpenAPI's http schemes know no custom keywords: describe the header instead.
            authorization = {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": f"The LLM client's API key as `Authorization: {keyword} <key>`.",
            }
        header = {
            "type": "apiKey",
            "in": "header",
            "name": conf.HEADER,
            "description": f"The LLM client's API key as `{conf.HEADER}: <key>`.",
        }
        return [authorization, header]
