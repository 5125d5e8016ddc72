from django.conf import settings
from django.test import override_settings

from drf_llm_keys.conf import DEFAULTS, conf


def test_settings_dict_gets_an_empty_default_when_the_project_sets_none() -> None:
    # tests/settings.py sets no DRF_LLM_KEYS: importing the models gave it one.
    assert settings.DRF_LLM_KEYS == {}
    assert conf.CACHE_TIMEOUT == DEFAULTS["CACHE_TIMEOUT"]


def test_override_settings_still_replaces_the_default() -> None:
    with override_settings(DRF_LLM_KEYS={"CACHE_TIMEOUT": 7}):
        assert conf.CACHE_TIMEOUT == 7
    assert conf.CACHE_TIMEOUT == DEFAULTS["CACHE_TIMEOUT"]
