"""Error reports (the admin e-mails, the debug page) that never show a key.

Django before 5.0 hides headers whose name matches API, TOKEN, KEY, SECRET... but shows
``Authorization`` in full: a 5xx answered to a request carrying ``Bearer <key>`` (a 503
during a database outage, say) e-mails the key to ``ADMINS``. Set::

    DEFAULT_EXCEPTION_REPORTER_FILTER = "drf_llm_keys.debug.KeyCleansingExceptionReporterFilter"
"""

from __future__ import annotations

from typing import Any

from django.views.debug import SafeExceptionReporterFilter

from .conf import conf


def key_header_names() -> set[str]:
    """The ``request.META`` names of the headers that carry keys."""
    return {"HTTP_AUTHORIZATION", "HTTP_" + conf.HEADER.upper().replace("-", "_")}


class KeyCleansingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus the ``Authorization`` header and ``DRF_LLM_KEYS['HEADER']``."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and key.upper() in key_header_names():
            return self.cleansed_substitute
        return super().cleanse_setting(key, value)
