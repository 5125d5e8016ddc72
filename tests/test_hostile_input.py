"""Hostile headers and client slugs (hypothesis): always the decision table's 401 or
anonymous answer, never a 5xx, never a database error. The long form is scripts/fuzz.py."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import harness
from .hostile import URLSAFE, World, api_key_headers, authorization_headers, check, slugs

# Transactional: the world is committed, so requests fill and use the cache as in production.
pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Outcomes seen, per test: a property that only ever saw one outcome proved little.
seen: dict[str, Counter[str]] = {}


@pytest.fixture
def world(db: None) -> World:
    return World.create()


@pytest.fixture
def outcomes(request: pytest.FixtureRequest) -> Counter[str]:
    return seen.setdefault(request.node.name, Counter())


@EXAMPLES
@given(data=st.data())
def test_authorization_header_gets_the_decision_tables_answer(api, world, outcomes, data):
    slug = data.draw(st.sampled_from(["protected-bot", "flagged-bot", "public-bot", "nobody"]))
    outcomes[check(world, api, slug, data.draw(authorization_headers(world)), None)] += 1


@EXAMPLES
@given(data=st.data())
def test_x_api_key_header_gets_the_decision_tables_answer(api, world, outcomes, data):
    slug = data.draw(st.sampled_from(["protected-bot", "flagged-bot", "public-bot", "nobody"]))
    outcomes[check(world, api, slug, None, data.draw(api_key_headers(world)))] += 1


@EXAMPLES
@given(data=st.data())
def test_both_headers_together_get_the_decision_tables_answer(api, world, outcomes, data):
    slug = data.draw(st.sampled_from(["protected-bot", "public-bot"]))
    authorization = data.draw(authorization_headers(world))
    outcomes[check(world, api, slug, authorization, data.draw(api_key_headers(world)))] += 1


@EXAMPLES
@given(data=st.data())
def test_hostile_client_slug_is_never_a_server_error(api, world, outcomes, data):
    headers = st.one_of(st.none(), st.just(f"Bearer {world.valid}"), authorization_headers(world))
    outcomes[check(world, api, data.draw(slugs()), data.draw(headers), None)] += 1


@EXAMPLES
@given(data=st.data())
def test_valid_prefix_with_a_wrong_secret_is_refused(api, world, data):
    prefix = world.valid_prefix
    secret = data.draw(
        st.text(URLSAFE, min_size=1, max_size=80).filter(lambda s: f"{prefix}.{s}" != world.valid)
    )
    header = data.draw(st.sampled_from(["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"]))
    value = f"{prefix}.{secret}" if header == "HTTP_X_API_KEY" else f"Bearer {prefix}.{secret}"
    response = api.get("/clients/protected-bot/echo/", **{header: value})
    assert response.status_code == 401, response.content


def test_every_property_saw_more_than_one_outcome():
    # Runs after the properties above (file order): each must have met refusals and
    # successes, or its strategies do not reach the interesting cases.
    assert set(seen) >= {
        "test_authorization_header_gets_the_decision_tables_answer",
        "test_x_api_key_header_gets_the_decision_tables_answer",
        "test_both_headers_together_get_the_decision_tables_answer",
        "test_hostile_client_slug_is_never_a_server_error",
    }, seen
    for name, counts in seen.items():
        assert counts["refused"] and (counts["accepted"] or counts["anonymous"]), (name, counts)


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
