"""Behind ``DATABASE_ROUTERS`` with a read replica that lags, every decision still comes from
where keys are written: a revoked key is refused at once in every process and never cached
as valid, the last-key guard counts keys on the primary, and an admin form read on the
replica never writes a revoked key back as active.

Needs PostgreSQL with a streaming standby (``scripts/services.sh standby``):
``DRF_LLM_KEYS_TEST_DATABASE_URL`` names the primary, ``DRF_LLM_KEYS_TEST_REPLICA_URL`` the
standby. The test database that Django creates on the primary reaches the standby by
replication. This process writes to the primary without a router; the worker processes it
starts run ``tests.replica_settings``, whose router sends every read to the standby, which
replays each commit ``LAG`` after the primary made it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse
from model_bakery import baker

from drf_llm_keys import keys
from drf_llm_keys.models import APIKey
from tests.support import harness
from tests.support.databases import standby_delay, standby_server
from tests.support.harness import Worker

REPLICA_URL = os.environ.get("DRF_LLM_KEYS_TEST_REPLICA_URL", "")
LAG = "1s"
ROUNDS = 6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (REPLICA_URL and django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")),
        reason="needs PostgreSQL with a streaming standby: DRF_LLM_KEYS_TEST_DATABASE_URL=postgres://... "
        "(the primary) and DRF_LLM_KEYS_TEST_REPLICA_URL=postgres://root@127.0.0.1:5433 "
        "(its standby, see scripts/services.sh standby)",
    ),
]


class Standby:
    """Queries on the standby's copy of the test database, outside any router."""

    def __init__(self, conninfo: dict[str, Any]) -> None:
        self.connection = psycopg.connect(**conninfo, autocommit=True)

    def value(self, sql: str, *params: Any) -> Any:
        row = self.connection.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def key_active(self, prefix: str) -> bool | None:
        """The key's is_active as the replica has it; None before its row got there."""
        return self.value("SELECT is_active FROM drf_llm_keys_apikey WHERE prefix = %s", prefix)

    def wait_for_key(self, prefix: str, active: bool) -> None:
        """Until the replica has the key, active or revoked."""
        harness.wait_until(lambda: self.key_active(prefix) is active, 60, f"the standby lags behind {prefix}")


@pytest.fixture
def standby() -> Iterator[Standby]:
    server = standby_server(REPLICA_URL)
    name = str(connection.settings_dict["NAME"])
    holder: list[Standby] = []

    def connected() -> bool:
        try:
            holder.append(Standby({**server, "dbname": name}))
        except psycopg.OperationalError:  # the test database has not reached it yet
            return False
        return True

    with standby_delay(server, LAG):
        try:
            harness.wait_until(connected, 60, f"the standby has no database {name}")
            yield holder[0]
        finally:
            for standby in holder:
                standby.connection.close()


@pytest.fixture
def spawn(settings: Any, tmp_path: Any) -> Iterator[Callable[[], Worker]]:
    """Start worker processes that read through the replica router."""
    env = harness.worker_environment(
        settings, str(tmp_path / "cache"), DJANGO_SETTINGS_MODULE="tests.replica_settings"
    )
    if "DRF_LLM_KEYS_TEST_REDIS_URL" in env:  # the prefix this process's cache uses
        env["DRF_LLM_KEYS_TEST_CACHE_KEY_PREFIX"] = settings.CACHES["default"].get("KEY_PREFIX", "")
    # A change returns one PUSH_HEARTBEAT after its write: well within LAG, so that the
    # requests right after it still meet the standby's old rows.
    env["DRF_LLM_KEYS_TEST_SETTINGS"] = json.dumps({"PUSH_HEARTBEAT": 0.2})
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker(env))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def test_a_revoked_key_is_refused_at_once_and_never_cached_as_valid(
    standby, spawn, make_key, protected_client
):
    here, there = spawn(), spawn()  # "here" revokes; "there" is another process
    slug = protected_client.slug
    _, keeper = make_key(protected_client)  # keeps the client protected throughout
    revoked: list[tuple[str, str]] = []
    seen: Counter[str] = Counter()
    accepted_after_revoke: list[str] = []
    valid_refused: list[str] = []
    stale_replica = 0
    for round_ in range(ROUNDS):
        api_key, plaintext = make_key(protected_client)
        standby.wait_for_key(api_key.prefix, active=True)
        # Both processes serve the key, and hold its decision.
        for name, worker in (("here", here), ("there", there)):
            for _ in range(2):
                status = worker.status(slug, plaintext)
                seen[f"valid {status}"] += 1
                if status != 200:
                    valid_refused.append(f"round {round_}: {name} {status}")

        assert here.manage("llm_keys", "revoke", api_key.prefix) == "ok"
        revoked.append((api_key.prefix, plaintext))
        for name, worker in (("same process", here), ("another process", there)):
            status = worker.status(slug, plaintext)
            seen[f"revoked {status}"] += 1
            if status != 401:
                accepted_after_revoke.append(f"round {round_}: {name} answered {status}")
            status = worker.status(slug, keeper)
            seen[f"valid {status}"] += 1
            if status != 200:
                valid_refused.append(f"round {round_}: {name} refused the kept key with {status}")
        # Asked after those requests: the replica still had the key active while they ran.
        stale_replica += standby.key_active(api_key.prefix) is True

    assert stale_replica > 0, "the standby never lagged: the rounds prove nothing"
    assert accepted_after_revoke == [], f"{seen}"
    assert valid_refused == [], f"{seen}"
    assert not [s for s in seen if int(s.split()[1]) >= 500], f"{seen}"

    # Once the replica has every revocation: nothing stale was cached as valid, here, there,
    # or in a process that starts now and reads only the shared cache's entries.
    for prefix, _ in revoked:
        standby.wait_for_key(prefix, active=False)
    newcomer = spawn()
    still_accepted = [
        f"{name} {prefix}"
        for prefix, plaintext in revoked
        for name, worker in (("here", here), ("there", there), ("new process", newcomer))
        if worker.status(slug, plaintext) != 401
    ]
    assert still_accepted == []
    assert newcomer.status(slug, keeper) == 200


def test_the_last_key_guard_counts_keys_on_the_primary(standby, spawn, make_key):
    operator, server = spawn(), spawn()
    stale_replica = 0
    for round_ in range(3):
        llm_client = baker.make_recipe("tests.llm_client", slug=f"guarded-{round_}")
        first, _ = make_key(llm_client)
        second, plaintext = make_key(llm_client)
        standby.wait_for_key(second.prefix, active=True)

        assert operator.manage("llm_keys", "revoke", first.prefix) == "ok"
        # Without --yes: the second is the last active key, whatever the replica says.
        reply = operator.manage("llm_keys", "revoke", second.prefix)
        stale_replica += standby.key_active(first.prefix) is True
        assert reply.startswith("CommandError: ") and "last active key" in reply, reply

        second.refresh_from_db()  # this process has no router: the primary
        assert second.is_active
        assert server.status(llm_client.slug) == 401  # still protected
        assert server.status(llm_client.slug, plaintext) == 200
    assert stale_replica > 0, "the standby never lagged: the rounds prove nothing"


def test_an_admin_form_read_on_a_lagging_replica_never_makes_a_revoked_key_active_again(
    standby, spawn, make_key, protected_client, admin_user, settings
):
    settings.DRF_LLM_KEYS = {"PUSH_HEARTBEAT": 0.2}  # this process revokes: within LAG
    operator = spawn()  # an admin whose pages read from the standby
    harness.wait_until(
        lambda: standby.value("SELECT 1 FROM auth_user WHERE username = %s", admin_user.username) == 1,
        60,
        "the standby lags behind the admin user",
    )
    assert operator.ask(f"login {admin_user.username}") == "ok"
    make_key(protected_client)  # keeps the client protected throughout
    stale_replica = 0
    for round_ in range(3):
        api_key, plaintext = make_key(protected_client)
        standby.wait_for_key(api_key.prefix, active=True)
        url = reverse("admin:drf_llm_keys_apikey_change", args=[api_key.pk])
        assert operator.status(url) == 200  # the form is opened...
        keys.revoke_key(api_key)  # ...the key revoked...
        form = {
            "name": api_key.name,
            "user": api_key.user_id,
            "description": f"edited {round_}",
            "expires_at_0": "",
            "expires_at_1": "",
            "scopes": "",
            "allowed_models": "",
        }
        assert operator.ask(f"post {url} {json.dumps(form)}") == "302"  # ...and the form saved
        stale_replica += standby.key_active(api_key.prefix) is True
        stored = APIKey.objects.get(pk=api_key.pk)
        assert (stored.is_active, stored.description) == (False, f"edited {round_}")
        assert operator.status(protected_client.slug, plaintext) == 401
    assert stale_replica > 0, "the standby never lagged: the rounds prove nothing"
