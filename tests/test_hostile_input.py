"""Hostile headers and client slugs (hypothesis): always the decision table's 401 or
anonymous answer, never a 5xx, never a database error. The long form is scripts/fuzz.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import harness
from tests.support.hostile import URLSAFE, World, api_key_headers, authorization_headers, check, slugs

# Transactional: the world is committed, so requests fill and use the cache as in production.
pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CLIENTS = ["protected-bot", "flagged-bot", "public-bot", "other-bot", "nobody"]


@pytest.fixture
def world(db: None) -> World:
    return World.create()


Case = tuple[str, "str | None", "str | None"]


def run_property(
    cases: st.SearchStrategy[Case], world: World, api: Any, explicit: tuple[Case, ...] = ()
) -> Counter[str]:
    """Check every generated (slug, Authorization, X-API-Key), and the explicit ones,
    against the table."""
    outcomes: Counter[str] = Counter()

    @EXAMPLES
    @given(case=cases)
    def holds(case: Case) -> None:
        outcomes[check(world, api, *case)] += 1

    for case in explicit:
        holds = example(case=case)(holds)
    holds()
    # A property that never met both a refusal and a success proved little.
    assert outcomes["refused"] and (outcomes["accepted"] or outcomes["anonymous"]), outcomes
    return outcomes


def test_authorization_header_gets_the_decision_tables_answer(api, world):
    # A valid key is rare among random headers: these make sure the success row is checked.
    accepted = (
        ("protected-bot", f"Bearer {world.valid}", None),
        ("other-bot", f"token  {world.other_client}", None),
    )
    outcomes = run_property(
        st.tuples(st.sampled_from(CLIENTS), authorization_headers(world), st.none()), world, api, accepted
    )
    assert outcomes["accepted"] >= len(accepted), outcomes


def test_x_api_key_header_gets_the_decision_tables_answer(api, world):
    accepted = (("flagged-bot", None, f" {world.valid}\t"), ("protected-bot", None, world.spare))
    outcomes = run_property(
        st.tuples(st.sampled_from(CLIENTS), st.none(), api_key_headers(world)), world, api, accepted
    )
    assert outcomes["accepted"] >= len(accepted), outcomes


def test_both_headers_together_get_the_decision_tables_answer(api, world):
    run_property(
        st.tuples(st.sampled_from(CLIENTS), authorization_headers(world), api_key_headers(world)), world, api
    )


def test_hostile_client_slug_is_never_a_server_error(api, world):
    headers = st.one_of(st.none(), st.just(f"Bearer {world.valid}"), authorization_headers(world))
    run_property(st.tuples(slugs(), headers, st.none()), world, api)


def test_valid_prefix_with_a_wrong_secret_is_refused(api, world):
    prefix = world.valid_prefix

    @EXAMPLES
    @given(
        secret=st.text(URLSAFE, min_size=1, max_size=80).filter(lambda s: f"{prefix}.{s}" != world.valid),
        header=st.sampled_from(["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"]),
    )
    def refused(secret: str, header: str) -> None:
        value = f"{prefix}.{secret}" if header == "HTTP_X_API_KEY" else f"Bearer {prefix}.{secret}"
        response = api.get("/clients/protected-bot/echo/", **{header: value})
        assert response.status_code == 401, response.content

    refused()


@pytest.mark.slow
def test_repeated_headers_over_a_real_server_are_refused_or_anonymous(tmp_path):
    # Only a real server receives a header twice; gunicorn joins the values with a comma.
    world = World.create()
    servers = harness.Servers(harness.child_environment(cache_dir=str(tmp_path / "cache")), workers=1)
    try:
        cases = [
            ("protected-bot", [("Authorization", f"Bearer {world.valid}")] * 2, 401),
            ("protected-bot", [("X-API-Key", world.valid)] * 2, 401),
            ("protected-bot", [("Authorization", f"Bearer {world.valid}"), ("X-API-Key", world.valid)], 200),
            ("protected-bot", [("X-API-Key", world.valid), ("X-API-Key", world.revoked)], 401),
            ("public-bot", [("X-API-Key", world.valid)] * 2, 200),
            ("public-bot", [("Authorization", f"Bearer {world.valid}")] * 2, 401),  # "Bearer a,Bearer a"
        ]
        for slug, headers, status in cases:
            connection = harness.http.client.HTTPConnection("127.0.0.1", servers.port, timeout=30)
            connection.putrequest("GET", f"/clients/{slug}/echo/")
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            connection.close()
            assert response.status == status, (slug, headers, body)
            if status == 200 and slug == "public-bot":
                assert b'"key":null' in body
    finally:
        servers.stop()
