from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class DrfLlmKeysConfig(AppConfig):
    name = "drf_llm_keys"
    verbose_name = _("LLM API keys")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, decisions, signals  # noqa: F401  (checks register on import)

        # The models ask the decision cache through here (has_active_api_key): they are
        # what it loads its entries from, so they cannot import it.
        self.decisions = decisions
        signals.connect()
        if apps.is_installed("drf_spectacular"):  # optional: the "spectacular" extra
            from .contrib import spectacular  # noqa: F401  (the extension registers on import)
