"""The swappable contract: the setting, the migrations, the relations and the checks."""

from io import StringIO

import pytest
from django.apps import apps
from django.core import checks
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from drf_llm_keys import get_client_model
from drf_llm_keys.models import LLMClient, LLMClientAPIKey
from tests.swapped_app.models import Deployment

pytestmark = pytest.mark.django_db


def test_get_client_model_returns_the_swapped_model():
    assert get_client_model() is Deployment


def test_migrations_are_in_sync_with_the_models():
    out = StringIO()
    try:
        call_command(
            "makemigrations", "drf_llm_keys", "swapped_app", "--check", "--dry-run", stdout=out, stderr=out
        )
    except SystemExit:
        pytest.fail(f"The models have changes without a migration:\n{out.getvalue()}")


def test_the_librarys_migration_runs_after_the_swapped_models():
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    assert ("swapped_app", "0001_initial") in graph.node_map[("drf_llm_keys", "0001_initial")].parents


def test_llm_client_is_swapped_out():
    assert LLMClient._meta.swapped == "swapped_app.Deployment"
    assert LLMClient not in apps.get_models()
    with pytest.raises(AttributeError, match="swapped"):
        LLMClient.objects.all()


def test_the_swapped_out_model_has_no_table_and_the_swapped_model_has_one():
    tables = connection.introspection.table_names()
    assert LLMClient._meta.db_table not in tables
    assert Deployment._meta.db_table in tables


def test_the_mapping_points_to_the_swapped_model():
    field = LLMClientAPIKey._meta.get_field("llm_client")
    assert field.related_model is Deployment
    assert Deployment._meta.get_field("api_key_links").related_model is LLMClientAPIKey


def test_the_mapping_tables_foreign_key_references_the_swapped_table():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, LLMClientAPIKey._meta.db_table)
    column = LLMClientAPIKey._meta.get_field("llm_client").column
    targets = {
        c["foreign_key"] for c in constraints.values() if c["foreign_key"] and c["columns"] == [column]
    }
    assert targets == {(Deployment._meta.db_table, "id")}


def test_the_system_checks_pass():
    call_command("check", stdout=StringIO())  # raises SystemCheckError on an error
    errors = [m for m in checks.run_checks(include_deployment_checks=False) if m.is_serious()]
    assert errors == []
