"""Fixtures of the custom user model suite: the owners are ``custom_user_app.Member`` rows,
whose ``is_active`` is a property.

This directory runs only under ``tests.custom_user_settings``, in its own process (see
``tests/test_swapped_model.py``); the fixtures of ``tests/conftest.py`` apply, except the
owner, which is redefined here.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.custom_user_app.models import Member


def pytest_configure(config: pytest.Config) -> None:
    if settings.AUTH_USER_MODEL != "custom_user_app.Member":
        raise pytest.UsageError("tests/custom_user runs with --ds tests.custom_user_settings only")


@pytest.fixture
def owner(db: None) -> Member:
    return Member.objects.create(username="owner")
