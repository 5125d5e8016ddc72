"""What differs between SQLite, PostgreSQL and MariaDB must not change a decision."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.shortcuts import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory

from drf_llm_keys import get_client_model
from drf_llm_keys.conf import conf
from drf_llm_keys.decisions import get_decision_cache
from drf_llm_keys.decisions.store import _fill_is_safe

from .views import PerViewEcho

# Invalidations run on commit: these tests need real commits.
pytestmark = pytest.mark.django_db(transaction=True)


class ClientEcho(PerViewEcho):
    """A view that finds its client the way real views do: a lookup in the database."""

    def get(self, request: Request, **kwargs: Any) -> Response:
        get_object_or_404(get_client_model(), **{conf.CLIENT_LOOKUP_FIELD: kwargs["llm_client"]})
        return super().get(request, **kwargs)


def echo(spelling: str) -> Response:
    response: Response = ClientEcho.as_view()(APIRequestFactory().get("/"), llm_client=spelling)
    return response


@pytest.mark.parametrize(
    ("lookup_field", "spelling"),
    [
        ("pk", "0{pk}"),  # an integer field parses "01" as 1, on every database
        ("slug", "PUBLIC-BOT"),  # MariaDB's *_ci collations match "public-bot"
        ("slug", "public-bot "),  # and ignore trailing spaces
    ],
)
def test_another_spelling_of_a_client_is_not_served_from_a_stale_entry(
    settings, public_client, make_key, lookup_field, spelling
):
    settings.DRF_LLM_KEYS = {"CLIENT_LOOKUP_FIELD": lookup_field}
    spelling = spelling.format(pk=public_client.pk)
    before = echo(spelling)
    assert before.status_code in (200, 404)  # 404: a database that does not match this spelling
    make_key(public_client)
    assert echo(spelling).status_code in (401, 404)


def test_fills_inside_a_transaction_are_safe_under_the_default_isolation_level():
    # Django's MySQL backend sets READ COMMITTED (the server's own default is REPEATABLE
    # READ, under which cache.lookup would stop filling inside transactions).
    with transaction.atomic():
        connection.ensure_connection()
        assert _fill_is_safe(get_decision_cache(), connection.alias)
