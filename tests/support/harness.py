"""Real processes for the multi-process tests and scripts: a private Redis, gunicorn workers,
the key-changing mutator, a bounded HTTP load, and the check of every recorded request
against every recorded key state change.

Times are ``time.monotonic()`` everywhere: one clock for all the processes of a host.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from . import ROOT, free_port, wait_until
from .proxy import Proxy
from .redis import RedisServer, channel_ports, detach, start_replica

ECHO = "/clients/{}/echo/"


class Faults:
    """Every ``every`` seconds, from ``offset`` on, a fault on the Redis server for ``length`` seconds.

    - ``stop``: stopped, then started empty. ``flush``: emptied. Neither needs a window.
    - ``pause``: frozen (SIGSTOP), then resumed. Redis still holds entries whose
      invalidation timed out while it was frozen; until the writer's retry lands they may
      be trusted: ``grace_after``, the seconds after each resume. With push invalidation a
      frozen Redis also lets processes trust their entries for up to PUSH_HEARTBEAT after
      it froze: ``grace_from_pause``, the seconds after each pause starts.
    - ``restart-snapshot``: ``SAVE``, then, ``length`` seconds of key changes later, killed
      (SIGKILL) and started again on the same port from that older snapshot. A process
      whose channel is down reads the new epoch up to PUSH_HEARTBEAT late:
      ``grace_from_restart``, the seconds after it answers again.

    ``grace`` collects the windows, reported apart by ``judge``; ``events`` the times;
    ``lost`` what each restart came back without (``rdb_changes_since_last_save``).
    """

    KINDS = ("stop", "pause", "flush", "restart-snapshot")

    def __init__(
        self,
        server: RedisServer,
        kind: str,
        every: float,
        length: float,
        offset: float,
        grace_after: float,
        grace_from_pause: float = 0.0,
        grace_from_restart: float = 0.0,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        self.server, self.kind, self.every, self.length, self.offset = server, kind, every, length, offset
        self.grace_after, self.grace_from_pause = grace_after, grace_from_pause
        self.grace_from_restart = grace_from_restart
        self.grace: list[tuple[float, float]] = []
        self.events: list[tuple[str, float]] = []  # (what, time.monotonic())
        self.lost: list[int] = []
        self.count = 0
        self.on = False

    def __call__(self, elapsed: float) -> None:
        if elapsed < self.offset:
            return
        due = (elapsed - self.offset) % self.every < max(self.length, 0.15)
        if due and not self.on:
            self.on = True
            self.count += 1
            self.begin()
        elif not due and self.on:
            self.end()

    def event(self, what: str) -> float:
        at = time.monotonic()
        self.events.append((what, at))
        return at

    def begin(self) -> None:
        if self.kind == "stop":
            self.server.stop()
        elif self.kind == "pause":
            self.server.pause()
            paused = self.event("paused")
            if self.grace_from_pause:
                self.grace.append((paused, paused + self.grace_from_pause))
        elif self.kind == "flush":
            self.server.flush()
        else:
            self.server.client().save()
            self.event("saved")

    def end(self) -> None:
        if not self.on:
            return
        self.on = False
        if self.kind == "stop":
            self.server.start()
        elif self.kind == "pause":
            self.server.resume()
            resumed = self.event("resumed")
            self.grace.append((resumed, resumed + self.grace_after))
        elif self.kind == "restart-snapshot":
            self.lost.append(int(self.server.client().info("persistence")["rdb_changes_since_last_save"]))
            killed = self.event("killed")
            self.server.kill()
            self.server.start()  # the same port, the same directory: the snapshot above
            self.event("restarted")
            self.grace.append((killed, time.monotonic() + self.grace_from_restart))


class Failovers(Faults):
    """Every ``every`` seconds: the replica's replication is cut (it keeps what it has);
    ``length`` seconds of key changes later the master is killed, the replica promoted and
    ``proxy`` (the address every process knows) moved to it; then a fresh replica of the new
    master is started for the next round. The promoted replica missed every change of those
    seconds; its new ``master_replid`` is the epoch that must end every old entry. A process
    whose channel is down reads it up to PUSH_HEARTBEAT late: ``grace_from_restart``.
    ``lost``: the bytes of replication stream each promoted replica missed.
    """

    KINDS = ("failover",)

    def __init__(
        self,
        master: RedisServer,
        replica: RedisServer,
        proxy: Proxy,
        directory: str | os.PathLike[str],
        every: float,
        length: float,
        offset: float,
        grace_from_restart: float,
    ) -> None:
        super().__init__(master, "failover", every, length, offset, 0.0, 0.0, grace_from_restart)
        self.replica, self.proxy, self.directory = replica, proxy, Path(directory)
        self.servers = [master, replica]  # all it started, to stop at the end

    def begin(self) -> None:
        detach(self.replica)
        self.event("detached")

    def end(self) -> None:
        if not self.on:
            return
        self.on = False
        offset = self.server.client().info("replication")["master_repl_offset"]
        self.lost.append(offset - self.replica.client().info("replication")["slave_repl_offset"])
        killed = self.event("master killed")
        self.server.kill()
        self.replica.client().replicaof("no", "one")
        self.proxy.point_to(self.replica.port)
        self.event("promoted")
        self.grace.append((killed, time.monotonic() + self.grace_from_restart))
        self.server = self.replica
        self.replica = start_replica(self.directory / f"replica-{self.count}", self.server)
        self.servers.append(self.replica)
        self.event("new replica in sync")

    def close(self) -> None:
        for server in self.servers:
            server.stop()


class LostTrackers(Faults):
    """Every ``every`` seconds, ``proxy`` (through which every process reaches Redis) cuts
    the server side of every push channel's tracking connection: Redis drops the tracking,
    the processes are told nothing and stop hearing announcements. Each trusts its entries
    for up to PUSH_HEARTBEAT after its last answered ping: ``grace_from_restart``, the
    seconds after each cut. ``lost``: the connections cut each time.
    """

    KINDS = ("lost-tracker",)

    def __init__(
        self, server: RedisServer, proxy: Proxy, every: float, offset: float, grace_from_restart: float
    ) -> None:
        super().__init__(server, "lost-tracker", every, 0.15, offset, 0.0, 0.0, grace_from_restart)
        self.proxy = proxy

    def begin(self) -> None:
        cut = self.event("trackers cut")
        ports = channel_ports(self.server, "tracker")
        for port in ports:
            with contextlib.suppress(StopIteration):  # gone meanwhile
                self.proxy.link_of(port).cut_server_side()
        self.lost.append(len(ports))
        self.grace.append((cut, time.monotonic() + self.grace_from_restart))

    def end(self) -> None:
        self.on = False


# --- the environment a child process needs to share the parent's database and cache ----


def child_environment(
    cache_dir: str | None = None, redis_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The parent's test database and cache, for a server or mutator process.

    With neither a Redis URL here nor one in the parent's settings, the children share a
    file-based cache in ``cache_dir`` (the parent's local-memory cache is its own).
    """
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.server_settings",
        DRF_LLM_KEYS_TEST_DB_NAME=str(connections["default"].settings_dict["NAME"]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    if redis_url is not None:
        env["DRF_LLM_KEYS_TEST_REDIS_URL"] = redis_url
    if "DRF_LLM_KEYS_TEST_REDIS_URL" in env:
        env["DRF_LLM_KEYS_TEST_CACHE_KEY_PREFIX"] = settings.CACHES["default"].get("KEY_PREFIX", "")
    else:
        if cache_dir is None:
            raise ValueError("a shared cache directory is needed when no Redis URL is set")
        env["DRF_LLM_KEYS_TEST_CACHE_DIR"] = cache_dir
    env.update(extra)
    return env


# --- a process that answers requests one at a time -------------------------------------


class Worker:
    """``tests.support.worker`` in another OS process: one request (or command) per call."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.readline()

    def status(self, slug: str, key: str = "") -> int:
        return int(self.ask(f"{slug} {key}"))

    def json(self, path: str, key: str = "") -> Any:
        """The JSON body of a GET of ``path`` there."""
        return json.loads(self.ask(f"json {path} {key}"))

    def manage(self, *args: str) -> str:
        """Run a management command there: "ok", or "CommandError: " and its message."""
        return self.ask(shlex.join(["manage", *args]))

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


def worker_env(config: dict[str, Any], library_settings: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment of a ``Worker`` on this test's database, its default cache ``config``
    (and, given, its ``DRF_LLM_KEYS``)."""
    env = {
        **os.environ,
        "DRF_LLM_KEYS_TEST_DB_NAME": str(connections["default"].settings_dict["NAME"]),
        "DRF_LLM_KEYS_TEST_CACHE": json.dumps(config),
    }
    if library_settings is not None:
        env["DRF_LLM_KEYS_TEST_SETTINGS"] = json.dumps(library_settings)
    return env


def worker_environment(settings: Any, cache_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a ``Worker`` sharing this process's test database and cache.

    Without Redis, this process moves to a file-based cache in ``cache_dir`` (``settings`` is
    pytest-django's fixture, which restores it afterwards) and the worker opens the same.
    """
    env = {**os.environ, "DRF_LLM_KEYS_TEST_DB_NAME": str(connections["default"].settings_dict["NAME"])}
    if "DRF_LLM_KEYS_TEST_REDIS_URL" not in os.environ:
        # The local-memory cache is per process.
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                "LOCATION": cache_dir,
            }
        }
        env["DRF_LLM_KEYS_TEST_CACHE_DIR"] = cache_dir
    return {**env, **extra}


# --- gunicorn --------------------------------------------------------------------------


class Servers:
    """One gunicorn master with ``workers`` worker processes on a loopback port; with
    ``asgi``, uvicorn serving Django's ASGI application instead (async views on its loop),
    through ``drf_llm_keys.asgi``, which writes the usage counts when uvicorn stops."""

    def __init__(self, env: dict[str, str], workers: int = 2, asgi: bool = False) -> None:
        self.port = free_port()
        self.name = "uvicorn" if asgi else "gunicorn"
        self.log = tempfile.TemporaryFile()
        if asgi:
            serve = ["uvicorn", "--factory", "drf_llm_keys.asgi:get_asgi_application", "--no-access-log"]
            serve += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        else:
            serve = ["gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}"]
            serve += ["--timeout", "60", "--graceful-timeout", "5", "django.core.wsgi:get_wsgi_application()"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *serve], env=env, cwd=ROOT, stdout=self.log, stderr=self.log
        )
        try:
            wait_until(self._answers, 60, f"{self.name} did not answer")
        except TimeoutError:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.output()}")
        try:
            return request(self.port, "/whoami/").status > 0
        except OSError:
            return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Reply:
    status: int
    body: bytes
    served_by: str | None
    headers: dict[str, str] = field(default_factory=dict)  # by lower-case name


def request(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return Reply(
            response.status,
            body,
            response.getheader("X-Served-By"),
            {name.lower(): value for name, value in response.getheaders()},
        )
    finally:
        connection.close()


# --- the mutator -----------------------------------------------------------------------


@dataclass
class KeyHistory:
    client: str
    prefix: str
    plaintext: str
    created: float  # atomic() returned: committed and published
    retire_begin: float | None = None
    retired: float | None = None
    how: str | None = None


class Mutator:
    """Runs ``tests.support.mutator`` and keeps the history of every key it changed."""

    def __init__(self, env: dict[str, str], config: dict[str, Any]) -> None:
        self.keys: dict[str, KeyHistory] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.changes = 0
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.mutator", json.dumps(config)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            with self.lock:
                if event["event"] == "created":
                    self.keys[event["prefix"]] = KeyHistory(
                        event["client"], event["prefix"], event["key"], event["done"]
                    )
                    self.changes += 1
                elif event["event"] == "retired":
                    history = self.keys[event["prefix"]]
                    history.retire_begin, history.retired, history.how = (
                        event["begin"],
                        event["done"],
                        event["how"],
                    )
                    self.changes += 1
                elif event["event"] == "ready":
                    self.ready.set()
        self.finished.set()

    def snapshot(self) -> list[KeyHistory]:
        with self.lock:
            return list(self.keys.values())

    def wait(self, timeout: float) -> None:
        self.process.wait(timeout)
        self.finished.wait(5)
        if self.process.returncode != 0:
            self.stderr.seek(0)
            raise RuntimeError(f"mutator failed:\n{self.stderr.read().decode(errors='replace')}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- the load and its check ------------------------------------------------------------


@dataclass
class Sent:
    kind: str  # "in service", "retired", "other client", "wrong secret"
    client: str
    prefix: str
    secret_ok: bool
    begin: float
    end: float
    status: int
    key_in_reply: str | None
    served_by: str | None


def pick(rng: random.Random, keys: list[KeyHistory], clients: list[str]) -> tuple[str, KeyHistory, str, bool]:
    """What to send: (kind, key, client, whether the secret is the key's own)."""
    in_service = [k for k in keys if k.retire_begin is None]
    retired = [k for k in keys if k.retired is not None]
    roll = rng.random()
    if roll < 0.25 and retired:
        key = rng.choice(retired[-20:])  # recent ones: the likeliest to be stale somewhere
        return "retired", key, key.client, True
    key = rng.choice(in_service or keys)
    if roll < 0.35 and len(clients) > 1:
        return "other client", key, rng.choice([c for c in clients if c != key.client]), True
    if roll < 0.42:
        return "wrong secret", key, key.client, False
    return "in service", key, key.client, True


def wrong_secret(plaintext: str) -> str:
    prefix, _, secret = plaintext.partition(".")
    return f"{prefix}.{secret[::-1] if secret[::-1] != secret else 'A' + secret[1:]}"


def load(
    port: int,
    mutator: Mutator,
    clients: list[str],
    *,
    duration: float,
    threads: int,
    rate: float,
    seed: int,
) -> list[Sent]:
    """``threads`` senders sharing at most ``rate`` requests per second, for ``duration``."""
    sent: list[Sent] = []
    sent_lock = threading.Lock()
    deadline = time.monotonic() + duration
    interval = threads / rate

    def sender(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        next_at = time.monotonic()
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            kind, key, client, secret_ok = pick(rng, mutator.snapshot(), clients)
            plaintext = key.plaintext if secret_ok else wrong_secret(key.plaintext)
            headers = (
                {"Authorization": f"Bearer {plaintext}"} if rng.random() < 0.5 else {"X-API-Key": plaintext}
            )
            begin = time.monotonic()
            try:
                reply = request(port, ECHO.format(client), headers)
            except OSError as exc:
                reply = Reply(599, repr(exc).encode(), None)
            end = time.monotonic()
            try:
                key_in_reply = json.loads(reply.body).get("key") if reply.status == 200 else None
            except ValueError:
                key_in_reply = None
            record = Sent(
                kind, client, key.prefix, secret_ok, begin, end, reply.status, key_in_reply, reply.served_by
            )
            with sent_lock:
                sent.append(record)

    workers = [threading.Thread(target=sender, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sent


@dataclass
class Verdict:
    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    server_processes: int = 0
    key_changes: int = 0
    # Requests sent after a retirement was committed and published: each must be refused.
    after_retirement: int = 0
    # Retired keys accepted within a window the design allows after a cache fault (an
    # invalidation that could not be written until the cache came back): reported apart.
    accepted_in_grace: list[Sent] = field(default_factory=list)
    # The invariants: all must stay empty.
    accepted_after_retirement: list[Sent] = field(default_factory=list)
    accepted_wrong_key: list[Sent] = field(default_factory=list)
    valid_refused: list[Sent] = field(default_factory=list)
    server_errors: list[Sent] = field(default_factory=list)
    server_log: str = ""
    keys: dict[str, KeyHistory] = field(default_factory=dict)  # the mutator's, by prefix

    @property
    def violations(self) -> int:
        return sum(
            map(
                len,
                (
                    self.accepted_after_retirement,
                    self.accepted_wrong_key,
                    self.valid_refused,
                    self.server_errors,
                ),
            )
        )

    def summary(self) -> str:
        return (
            f"{self.requests} requests from {self.server_processes} server processes, "
            f"{self.key_changes} key changes; by kind {dict(self.by_kind)}; "
            f"by status {dict(self.by_status)}; "
            f"{self.after_retirement} sent after their key's retirement; "
            f"accepted after retirement: {len(self.accepted_after_retirement)} "
            f"(+{len(self.accepted_in_grace)} in a cache-fault grace window), "
            f"wrong key accepted: {len(self.accepted_wrong_key)}, "
            f"valid refused: {len(self.valid_refused)}, server errors: {len(self.server_errors)}"
        )


def judge(
    sent: list[Sent],
    keys: dict[str, KeyHistory],
    key_changes: int,
    grace: Sequence[tuple[float, float]] = (),
) -> Verdict:
    """Check every request against the key's history.

    A request is *valid* when its key was committed before the request began and its
    retirement (if any) began after the reply came back: it must be accepted. A request
    that began after the retirement was committed and published must be refused. Between
    the two, either answer is correct.
    """
    verdict = Verdict(requests=len(sent), key_changes=key_changes)
    verdict.server_processes = len({s.served_by for s in sent if s.served_by})
    for s in sent:
        verdict.by_kind[s.kind] += 1
        verdict.by_status[s.status] += 1
        history = keys[s.prefix]
        accepted = s.status == 200 and s.key_in_reply == s.prefix
        right_key = s.secret_ok and history.client == s.client
        if s.status >= 500:
            verdict.server_errors.append(s)
        retired_before = history.retired is not None and history.retired < s.begin
        verdict.after_retirement += retired_before
        if accepted and retired_before:
            # Overlap, not the start alone: a request sent while Redis was frozen may have
            # its cache read answered just after the resume, inside the window.
            in_grace = any(s.begin <= end and start <= s.end for start, end in grace)
            (verdict.accepted_in_grace if in_grace else verdict.accepted_after_retirement).append(s)
        if accepted and not right_key:
            verdict.accepted_wrong_key.append(s)
        in_service = history.retire_begin is None or history.retire_begin > s.end
        if right_key and history.created < s.begin and in_service and not accepted and s.status < 500:
            verdict.valid_refused.append(s)
    return verdict


def run(
    env: dict[str, str],
    clients: list[str],
    owner: str,
    *,
    duration: float,
    workers: int = 2,
    threads: int = 4,
    rate: float = 150,
    change_interval: float = 0.05,
    seed: int = 1,
    faults: Faults | None = None,
    server_env: dict[str, str] | None = None,
) -> Verdict:
    """Serve ``clients`` from gunicorn while the mutator changes their keys; judge it all.

    ``faults`` is called from a thread about every 0.1 s while the load runs. The servers
    run in ``server_env`` when given (other settings: a read replica), the mutator in ``env``.
    """
    servers = Servers(server_env or env, workers)
    mutator = None
    try:
        config = {
            "clients": clients,
            "owner": owner,
            "duration": duration,
            "interval": change_interval,
            "seed": seed,
        }
        mutator = Mutator(env, config)
        if not mutator.ready.wait(60):
            mutator.wait(5)
            raise TimeoutError("the mutator did not create its first keys")
        stop = threading.Event()
        injector = None
        if faults is not None:
            started = time.monotonic()

            def inject() -> None:
                while not stop.wait(0.1):
                    faults(time.monotonic() - started)
                faults.end()

            injector = threading.Thread(target=inject, daemon=True)
            injector.start()
        try:
            sent = load(
                servers.port, mutator, clients, duration=duration, threads=threads, rate=rate, seed=seed
            )
        finally:
            stop.set()
            if injector is not None:
                injector.join()
        mutator.wait(duration + 60)
        verdict = judge(sent, mutator.keys, mutator.changes, faults.grace if faults else ())
        verdict.keys = mutator.keys
    finally:
        if mutator is not None:
            mutator.stop()
        servers.stop()
    verdict.server_log = servers.output()
    return verdict
