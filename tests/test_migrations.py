from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_migrations_are_in_sync_with_the_models():
    out = StringIO()
    try:
        call_command("makemigrations", "drf_llm_keys", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"The models have changes without a migration:\n{out.getvalue()}")
