"""The decision protocol, step by step: at every step where it talks to the database or to
Redis, every event that can happen there, and the invariants after it.

Steps (``backend.on_step``): a reader's cold lookup (a generation in Redis, no entry):
*generation read*, *rows read*, *before fill*, *after fill*; a reader's first lookup (no
generation): *generation read*, *rows read*, *leased*; a writer's revoke: *committed*
(between its commit and its write), *generations written* (between the write and WAIT).

Events, each ending with a change that returned (a revoke, or a scope change, by another
process) where it has one: that change alone; a writer SIGKILLed after its commit; a
stale instance (an admin form read before the revoke) saved after it; FLUSHDB; eviction of
the client's generation; a restart from a snapshot older than the revoke; a lost
announcement (every subscriber's connection killed); a black-holed channel connection;
a Sentinel failover whose old master stays up (``test_protocol_through_a_failover``).

After each: no revoked key accepted after its revoke returned (here and in a second warm
process), no entry older than the last returned change trusted (the scope change), and a
valid key accepted again within the documented bound. Real Redis servers, a real
database, real processes; the step hooks only inject the events. The matrix is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from model_bakery import baker

from drf_llm_keys import keys as key_operations
from drf_llm_keys.decisions import get_decision_cache, publish
from drf_llm_keys.decisions.names import generation_name
from drf_llm_keys.models import APIKey
from tests.support import bearer, wait_until
from tests.support.harness import Worker, worker_env
from tests.support.proxy import Proxy
from tests.support.redis import (
    HEARTBEAT,
    RedisServer,
    cache_config,
    channel_ports,
    master_and_replica,
    running_redis,
    running_sentinel,
)
from tests.support.world import URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCOPED = "/scoped/{}/echo/"
READER_STEPS = [
    ("cold", "generation read"),
    ("cold", "rows read"),
    ("cold", "before fill"),
    ("cold", "after fill"),
    ("first", "generation read"),
    ("first", "rows read"),
    ("first", "leased"),
]
WRITER_STEPS = [("writer", "committed"), ("writer", "generations written")]
STEPS = READER_STEPS + WRITER_STEPS
EVENTS = [
    "revoke",
    "scope change",
    "writer killed after commit",
    "stale instance saved",
    "flushdb",
    "generation evicted",
    "restart from older snapshot",
    "lost announcement",
    "black-holed channel",
]
FAILOVER = "failover, old master alive"

# step x event -> "ok", filled in as the cells run; printed at the end of the module.
MATRIX: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", autouse=True)
def print_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not MATRIX:
        return
    events = [*EVENTS, FAILOVER, f"{FAILOVER}, push off"]
    reporter.write_line("")
    reporter.write_line("decision protocol: step x event (ok = every invariant held)")
    width = max(len(f"{path}: {step}") for path, step in STEPS)
    reporter.write_line(" " * width + "  " + "  ".join(f"E{i + 1}" for i in range(len(events))))
    for path, step in STEPS:
        row = [
            MATRIX.get((f"{path}: {step}", event), "-").center(len(f"E{i + 1}"))
            for i, event in enumerate(events)
        ]
        reporter.write_line(f"{f'{path}: {step}':<{width}}  " + "  ".join(row))
    for i, event in enumerate(events):
        reporter.write_line(f"  E{i + 1}: {event}")


@dataclass
class Cell:
    """One cell's world: a protected client with the key to revoke, a spare key (stays
    valid, keeps the client protected) and a key a writer revokes; a worker that reads
    (warm), one that writes; and how to reach Redis."""

    server: Callable[[], RedisServer]  # the master now
    config: dict[str, Any]  # the cache, as the workers reach it
    reader: Worker
    writer: Worker
    api: Any
    target: APIKey
    target_key: str
    spare_key: str
    other: APIKey
    other_key: str
    revoked: list[str] = field(default_factory=list)  # plaintexts whose revoke returned
    proxy: Proxy | None = None
    sentinel: Any = None
    snapshot_taken: bool = False

    def here(self, plaintext: str, url: str = URL) -> int:
        return int(self.api.get(url.format("protected-bot"), **bearer(plaintext)).status_code)

    def there(self, plaintext: str, url: str = URL) -> int:
        return self.reader.status(url.format("protected-bot").rstrip("/") + "/", plaintext)


def revoke_elsewhere(cell: Cell, api_key: APIKey, plaintext: str) -> None:
    assert cell.writer.manage("llm_keys", "revoke", api_key.prefix) == "ok"
    cell.revoked.append(plaintext)


def inject(cell: Cell, event: str, victim: tuple[APIKey, str]) -> None:
    """``event``, ending with the victim's revoke (by another process) returned."""
    api_key, plaintext = victim
    redis = cell.server().client()
    if event == "revoke":
        revoke_elsewhere(cell, api_key, plaintext)
    elif event == "scope change":
        assert cell.writer.manage("llm_keys", "update", api_key.prefix, "--scope", "chat") == "ok"
    elif event == "writer killed after commit":
        dying = Worker(worker_env(cell.config, library_settings()))
        assert dying.ask("die-after-commit") == "armed"
        dying.ask(f"manage llm_keys revoke {api_key.prefix}")  # no answer: it died
        assert dying.process.wait(10) == -9
        assert not APIKey.objects.get(pk=api_key.pk).is_active, "killed after its commit"
        # The revoke never returned; the one that did, for the invariant, is the operator's
        # re-run: it must publish again, not report "nothing changed".
        revoke_elsewhere(cell, api_key, plaintext)
    elif event == "stale instance saved":
        stale = APIKey.objects.get(pk=api_key.pk)  # as an admin form reads it
        revoke_elsewhere(cell, api_key, plaintext)
        stale.description = "edited in a form opened before the revoke"
        stale.save()
    elif event == "flushdb":
        revoke_elsewhere(cell, api_key, plaintext)
        redis.flushdb()
    elif event == "generation evicted":
        revoke_elsewhere(cell, api_key, plaintext)
        evict_generations(cell.server())
    elif event == "restart from older snapshot":
        redis.save()
        revoke_elsewhere(cell, api_key, plaintext)
        server = cell.server()
        server.kill()
        server.start()
    elif event == "lost announcement":
        redis.client_kill_filter(_type="pubsub")
        revoke_elsewhere(cell, api_key, plaintext)
    elif event == "black-holed channel":
        assert cell.proxy is not None
        for port in channel_ports(cell.server(), "subscriber"):
            try:
                cell.proxy.link_of(port).cut_server_side()
            except StopIteration:  # the worker's own channel: not through the proxy
                pass
        revoke_elsewhere(cell, api_key, plaintext)
    elif event.startswith(FAILOVER):
        failover(cell)
        revoke_elsewhere(cell, api_key, plaintext)
    else:  # pragma: no cover
        raise AssertionError(event)


def evict_generations(server: RedisServer) -> None:
    redis = server.client()
    names = redis.keys("*:g:*")
    if names:
        redis.delete(*names)


def failover(cell: Cell) -> None:
    old = cell.server()
    sentinel = cell.sentinel
    # Sentinel refuses (NOGOODSLAVE) until it has seen the last failover's replica settle.
    deadline = time.monotonic() + 30
    while True:
        try:
            sentinel.client.execute_command("SENTINEL", "FAILOVER", sentinel.service)
            break
        except redis.ResponseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wait_until(lambda: sentinel.master_port() not in (None, old.port), 30, "Sentinel names the new master")
    # The old master stays up and a master for a while: the readers' connections are there.


def library_settings(push: bool = True) -> dict[str, Any]:
    # No usage flush while the module runs: a worker's would race the flush of the test
    # database between tests.
    return {"PUSH_HEARTBEAT": HEARTBEAT, "PUSH_INVALIDATION": push, "USAGE_FLUSH_INTERVAL": 3600}


def run_cell(cell: Cell, path: str, step: str, event: str) -> None:
    local = get_decision_cache()
    gen = generation_name("protected-bot")
    for plaintext in (cell.target_key, cell.spare_key):  # warm, here and there
        for _ in range(2):
            assert cell.here(plaintext) == 200
            assert cell.there(plaintext) == 200
    assert cell.here(cell.target_key, SCOPED) == 200
    victim = (cell.other, cell.other_key) if path == "writer" else (cell.target, cell.target_key)
    fired: list[str] = []

    def on_step(name: str) -> None:
        if name == step and not fired:
            fired.append(name)
            inject(cell, event, victim)

    if path == "cold":  # a generation in Redis, no entry under it
        publish({gen})
    elif path == "first":  # no generation at all
        evict_generations(cell.server())
        time.sleep(HEARTBEAT)  # as a writer settles: every channel has the announcement
    local.backend.on_step = on_step
    try:
        if path == "writer":
            key_operations.revoke_key(cell.target)
            cell.revoked.append(cell.target_key)
        else:
            cell.here(cell.target_key)  # the lookup that passes the step
    finally:
        local.backend.on_step = None
    assert fired, f"the lookup never reached {step!r}"
    # No revoked key accepted, here or in the warm process, from now on.
    for plaintext in cell.revoked:
        for _ in range(3):
            assert cell.here(plaintext) == 401, f"{step} x {event}: revoked key accepted here"
            assert cell.there(plaintext) == 401, f"{step} x {event}: revoked key accepted there"
    if event == "scope change":
        changed = victim[1]
        assert cell.here(changed, SCOPED) == 403, "an entry older than the scope change trusted here"
        assert cell.there(changed, SCOPED) == 403, "an entry older than the scope change trusted there"
    # A valid key is refused at most for the documented bound (none here: the database
    # answers whenever the cache cannot), and served again from the cache after it.
    assert cell.here(cell.spare_key) == 200
    assert cell.there(cell.spare_key) == 200
    MATRIX[(f"{path}: {step}", event)] = "ok"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("protocol"), args=("--dbfilename", "dump.rdb")) as found:
        yield found


@pytest.fixture(scope="module")
def proxy(server: RedisServer) -> Iterator[Proxy]:
    found = Proxy(server.port)
    yield found
    found.close()


def make_cell(
    make_key: Any, api: Any, workers: Workers, current: Callable[[], RedisServer], **extra: Any
) -> Cell:
    protected = baker.make_recipe("tests.llm_client", slug="protected-bot")
    target, target_key = make_key(protected, scopes=["chat", "files"])
    _, spare_key = make_key(protected)
    other, other_key = make_key(protected)
    reader, writer = workers.started()
    return Cell(
        current, workers.config, reader, writer, api, target, target_key, spare_key, other, other_key, **extra
    )


class Workers:
    """A reader and a writer process for a module's cells, started on first use (the test
    database exists by then), stopped at the module's end."""

    def __init__(self, config: dict[str, Any], push: bool = True) -> None:
        self.config = config
        self.push = push
        self.processes: list[Worker] = []

    def started(self) -> tuple[Worker, Worker]:
        if not self.processes:
            env = worker_env(self.config, library_settings(self.push))
            self.processes = [Worker(env), Worker(env)]
        reader, writer = self.processes
        return reader, writer

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture(scope="module")
def workers(server: RedisServer) -> Iterator[Workers]:
    found = Workers(cache_config(server, timeout=2))
    yield found
    found.stop()


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize(("path", "step"), STEPS)
def test_protocol(path, step, event, server, proxy, workers, settings, make_key, api):
    server.flush()
    # This process reaches Redis through the proxy (its channel can be black-holed); the
    # workers reach it directly.
    settings.CACHES = {"default": cache_config(proxy.url)}
    settings.DRF_LLM_KEYS = library_settings()
    run_cell(make_cell(make_key, api, workers, lambda: server, proxy=proxy), path, step, event)


@pytest.fixture(scope="module")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[RedisServer]]]:
    directory = tmp_path_factory.mktemp("failover")
    with (
        master_and_replica(directory) as (master, replica),
        running_sentinel(directory / "sentinel", master) as sentinel,
    ):
        wait_until(lambda: sentinel.replicas() == 1, 15, "Sentinel knows the replica")
        yield sentinel, [master, replica]


@pytest.fixture(scope="module")
def sentinel_workers(sentinel_topology: tuple[Any, list[RedisServer]]) -> Iterator[dict[bool, Workers]]:
    found = {push: Workers(sentinel_topology[0].cache_config(), push) for push in (True, False)}
    yield found
    for workers in found.values():
        workers.stop()


@pytest.mark.parametrize("push", [True, False], ids=["push", "no-push"])
@pytest.mark.parametrize(("path", "step"), STEPS)
def test_protocol_through_a_failover(
    path, step, push, sentinel_topology, sentinel_workers, settings, make_key, api
):
    sentinel, servers = sentinel_topology

    def current() -> RedisServer:
        port = sentinel.master_port()
        return next(s for s in servers if s.port == port)

    wait_until(lambda: all(in_role(s) for s in servers), 30, "the old master demoted")
    current().flush()
    settings.CACHES = {"default": sentinel.cache_config()}
    settings.DRF_LLM_KEYS = library_settings(push)
    event = FAILOVER if push else f"{FAILOVER}, push off"
    cell = make_cell(make_key, api, sentinel_workers[push], current, sentinel=sentinel)
    run_cell(cell, path, step, event)


def in_role(server: RedisServer) -> bool:
    """Settled: a replica linked to its master, or a master with its replica."""
    replication = server.client().info("replication")
    if replication["role"] == "master":
        return int(replication.get("connected_slaves", 0)) >= 1
    return replication.get("master_link_status") == "up"
