"""Fixtures of the swapped-model suite: the clients are ``swapped_app.Deployment`` rows.

This directory runs only under ``tests.swapped_settings``, in its own process (see
``tests/test_swapped_model.py``); the fixtures of ``tests/conftest.py`` apply, except
the clients, which are redefined here.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from model_bakery import baker

from tests.swapped_app.models import Deployment


def pytest_configure(config: pytest.Config) -> None:
    if settings.DRF_LLM_KEYS_CLIENT_MODEL != "swapped_app.Deployment":
        raise pytest.UsageError("tests/swapped runs with --ds tests.swapped_settings only")


@pytest.fixture
def public_client(db: None) -> Deployment:
    return baker.make(Deployment, name="Public", slug="public-bot", region="us-east")


@pytest.fixture
def protected_client(db: None) -> Deployment:
    # Protected by the key the tests map to it, not by require_api_key.
    return baker.make(Deployment, name="Protected", slug="protected-bot", region="eu-west")
