from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DrfLlmKeysConfig(AppConfig):
    name = "drf_llm_keys"
    verbose_name = _("LLM API keys")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (checks register on import)
        from .conf import install_settings_default

        install_settings_default()

        signals.connect()
