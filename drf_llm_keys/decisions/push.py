"""Zero-round-trip warm requests: Redis tells every process when a generation changes.

Two connections of this process's own: a subscriber to Redis's invalidation channel, and a
tracker that turns on client-side caching in broadcast mode (``CLIENT TRACKING ... BCAST``)
for the generation prefix; the tracker also carries this process's fills, whose replies it
reads later. A generation read from the master while both connections answer the heartbeat
is trusted until Redis announces its change.

Why that is "at once": Redis queues a change's announcement before its reply to the writer,
and a PONG after both. A process trusts only while its last answered ping is younger than
``PUSH_HEARTBEAT``; a writer returns ``PUSH_HEARTBEAT`` after its write was acknowledged
(``settle_seconds``). So a process that trusts after that moment has read a PONG to a ping
sent after the write, and the announcement before it. The cases that suspend trust (an
error, a fork, a silent connection, another master) are in docs/design.md.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis.exceptions import ResponseError

from ..conf import conf
from .backends import Tag
from .names import generation_name, generation_prefix
from .redis import RedisBackend, epoch_of, info_fields

logger = logging.getLogger("drf_llm_keys")

INVALIDATION_CHANNEL = "__redis__:invalidate"
# Connection options (redis-py 8) that a RESP2 connection refuses.
_RESP3_ONLY = ("maint_notifications", "oss_cluster_maint_notifications")
# Seconds between two attempts to open a channel, after one failed.
RETRY_DELAY = 5.0


class Unsupported(Exception):
    """The cache cannot announce changes (Redis before 6, an ACL, a key function)."""

    # A cache set up without it is the project's choice; a Redis that refuses is worth a warning.
    def __init__(self, message: str, level: int = logging.INFO) -> None:
        super().__init__(message)
        self.level = level


class Channel:
    """One process's subscription to the announcements of one cache's generation keys."""

    def __init__(self, made_prefix: str, connections: list[Any], epoch: str) -> None:
        self.epoch = epoch  # of the master these connections reach
        self.made_prefix = made_prefix  # the generation keys' prefix, as Redis sees it
        self.gen_prefix = generation_prefix()
        self.subscriber, self.tracker = connections
        self.lock = threading.Lock()
        self.alive = True
        # Generation name -> the tag read while no announcement came; least recently used first.
        self.current: dict[str, Tag] = {}
        self.announcements = 0
        self.proven_at = time.monotonic()  # everything announced before it has been read
        self.ping_sent_at: float | None = None
        self.answered: set[str] = set()  # which connections answered the ping in flight
        self.lapse_logged = False

    def known(self, gen_name: str) -> Tag | None:
        """The generation's tag as last read, while nothing announced its change and the
        channel is proven; else None."""
        with self.lock:
            if not self._proven():
                return None
            tag = self.current.pop(gen_name, None)
            if tag is not None:  # least recently used first: a hit moves it to the end
                self.current[gen_name] = tag
            return tag

    def proven(self) -> bool:
        """Whether the channel is up and has proven, within ``PUSH_HEARTBEAT``, that every
        announcement Redis sent before then has been read."""
        with self.lock:
            return self._proven()

    def _proven(self) -> bool:
        now = time.monotonic()
        return self._read(now) and now - self.proven_at <= conf.PUSH_HEARTBEAT

    def mark(self) -> int | None:
        """Taken before a read of a generation: ``confirm`` needs it."""
        with self.lock:
            return self.announcements if self._read() else None

    def confirm(self, gen_name: str, tag: Tag, mark: int | None) -> None:
        """Record a generation read after ``mark``, unless anything was announced since:
        that announcement may be of a write Redis ran after the read."""
        with self.lock:
            if mark is None or not self._read() or self.announcements != mark:
                return
            self.current[gen_name] = tag
            while len(self.current) > conf.LOCAL_ENTRIES:
                del self.current[next(iter(self.current))]

    def forget(self, gen_names: set[str]) -> None:
        with self.lock:
            for name in gen_names:
                self.current.pop(name, None)

    def send(self, command: tuple[Any, ...]) -> bool:
        """Send a write (a fill, a lease) on the tracking connection, its reply read later;
        False if not sent."""
        with self.lock:
            if not self.alive:
                return False
            try:
                self.tracker.send_command(*command, check_health=False)
            except Exception:
                self._lost()
                return False
            return True

    def _read(self, now: float | None = None) -> bool:
        """Apply every announcement that has arrived (and keep the heartbeat going); False
        once the channel is down."""
        if not self.alive:
            return False
        try:
            while self.tracker.can_read(0):
                try:
                    reply = self.tracker.read_response()
                except ResponseError:  # a fill refused (out of memory, say): only that is lost
                    logger.warning("drf_llm_keys: cache write failed", exc_info=True)
                    continue
                # A fill's OK, a lease's OK or nil (a generation there already), a PONG.
                if reply is not None and _text(reply).upper() == "PONG":
                    self._answered("tracker")
                elif reply is not None and _text(reply).upper() != "OK":
                    raise ConnectionError("unexpected reply on the tracking connection")
            while self.subscriber.can_read(0):
                self._apply(self.subscriber.read_response())
            if now is not None:
                self._heartbeat(now)
        except Exception:
            self._lost()
            return False
        return True

    def _apply(self, message: Any) -> None:
        kind = _text(message[0])
        if kind == "message":
            self.announcements += 1
            if message[2] is None:  # FLUSHDB or FLUSHALL
                self.current.clear()
                return
            for key in message[2]:
                made = _text(key)
                if made.startswith(self.made_prefix):
                    self.current.pop(self.gen_prefix + made[len(self.made_prefix) :], None)
        elif kind == "pong":
            self._answered("subscriber")

    def _answered(self, which: str) -> None:
        if self.ping_sent_at is None:
            return
        self.answered.add(which)
        if len(self.answered) == 2:
            self.proven_at, self.ping_sent_at = self.ping_sent_at, None
            self.lapse_logged = False

    def _heartbeat(self, now: float) -> None:
        heartbeat = conf.PUSH_HEARTBEAT
        if self.ping_sent_at is None:
            if now - self.proven_at >= heartbeat / 2:
                # Both: the tracker too, or a server-side idle timeout would close it.
                for connection in (self.subscriber, self.tracker):
                    connection.send_command("PING", check_health=False)
                self.ping_sent_at, self.answered = now, set()
        elif now - self.ping_sent_at > 10 * heartbeat:
            logger.warning("drf_llm_keys: invalidation channel silent, reconnecting")
            self.close()
        elif now - self.ping_sent_at > heartbeat and not self.lapse_logged:
            # Timed from the ping: after an idle spell the first request's ping is unanswered yet.
            logger.warning(
                "drf_llm_keys: no answer from the invalidation channel's %s within PUSH_HEARTBEAT: "
                "one GET per request until it answers",
                " and ".join(sorted({"subscriber", "tracker"} - self.answered)),
            )
            self.lapse_logged = True

    def _lost(self) -> None:
        logger.warning("drf_llm_keys: invalidation channel lost: one GET per request", exc_info=True)
        self.close()

    def close(self) -> None:
        self.alive = False
        _disconnect([self.subscriber, self.tracker])


class PushBackend(RedisBackend):
    """Redis, with a channel that lets held entries be trusted without a round trip; opened
    on first use, reopened after a failure (at most every ``RETRY_DELAY`` seconds)."""

    announces = True

    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self.opened: Channel | None = None
        self.retry_at: float | None = None  # after a failure, when to try again
        self.open_lock = threading.Lock()

    @property
    def settle_seconds(self) -> float:  # type: ignore[override]
        return conf.PUSH_HEARTBEAT

    def channel(self) -> Channel | None:
        current = self.opened
        if current is not None and current.alive:
            return current
        if self.retry_at is not None and time.monotonic() < self.retry_at:
            return None
        return self._open()

    def trusts(self, gen_name: str, tag: Tag) -> bool:
        channel = self.channel()
        return channel is not None and channel.known(gen_name) == tag

    def read(self, gen_name: str, entry_name: str | None) -> tuple[Tag | None, Any]:
        channel = self.channel()
        if channel is None:
            return super().read(gen_name, entry_name)
        mark = channel.mark()
        found = self.read_master([gen_name] if entry_name is None else [gen_name, entry_name])
        # A channel proven after the read reached the server run it connected to.
        epoch = channel.epoch if channel.proven() else self.epoch()
        tag = self._tag(found.get(gen_name), epoch)
        if tag is not None:
            channel.confirm(gen_name, tag, mark)
        return tag, None if entry_name is None else found.get(entry_name)

    def fill(self, entry_name: str, tag: Tag, entry: Any) -> None:
        value = (tag.generation, tag.epoch, entry)
        if not self._send(("SET", *self.encode(entry_name, value), "EX", conf.CACHE_TIMEOUT)):
            super().fill(entry_name, tag, entry)

    def lease(self, gen_name: str, token: str) -> None:
        if not self._send(("SET", *self.encode(gen_name, token), "EX", conf.CACHE_TIMEOUT, "NX")):
            super().lease(gen_name, token)

    def _send(self, command: tuple[Any, ...]) -> bool:
        # A cold request waits for neither reply: the tag decides whether a late write is used.
        channel = self.channel()
        return channel is not None and channel.send(command)

    def forget(self, gen_names: set[str]) -> None:
        if self.opened is not None:
            self.opened.forget(gen_names)

    def close(self) -> None:
        with self.open_lock:
            if self.opened is not None:
                self.opened.close()
                self.opened = None
        super().close()

    def _open(self) -> Channel | None:
        with self.open_lock:
            if self.opened is not None and self.opened.alive:
                return self.opened
            self.opened = None
            try:
                self.opened = self._connect()
            except Unsupported as exc:
                logger.log(exc.level, "drf_llm_keys: no invalidation channel (%s): one GET per request", exc)
                self.retry_at = float("inf")
            except Exception:
                logger.warning("drf_llm_keys: could not open the invalidation channel", exc_info=True)
                self.retry_at = time.monotonic() + RETRY_DELAY
            else:
                self.retry_at = None
            return self.opened

    def _connect(self) -> Channel:
        # The master's pool: with Sentinel, its connections find the current master.
        pool = self.master().connection_pool
        made_prefix = str(self.cache.make_key(generation_prefix()))
        if not str(self.cache.make_key(generation_name("x"))).startswith(made_prefix):
            raise Unsupported("the cache's KEY_FUNCTION does not keep a common prefix")
        opened: list[Any] = []
        try:
            subscriber, tracker = _connection(pool, opened), _connection(pool, opened)
            subscriber.send_command("CLIENT", "ID")
            subscriber_id = subscriber.read_response()
            subscriber.send_command("SUBSCRIBE", INVALIDATION_CHANNEL)
            subscriber.read_response()
            # Before tracking starts: every generation read from now on is of this server run.
            tracker.send_command("INFO", "server")
            server = info_fields(tracker.read_response())
            tracker.send_command("INFO", "replication")
            epoch = epoch_of(server, info_fields(tracker.read_response()))
            tracker.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", subscriber_id, "BCAST", "PREFIX", made_prefix
            )
            tracker.read_response()
        except BaseException as exc:
            _disconnect(opened)
            if isinstance(exc, ResponseError):  # Redis before 6, or CLIENT denied by an ACL
                raise Unsupported(f"Redis refused client tracking: {exc}", logging.WARNING) from None
            raise
        return Channel(made_prefix, [subscriber, tracker], epoch)


def _connection(pool: Any, opened: list[Any]) -> Any:
    """A connection of our own, configured like the pool's, in RESP2 with short timeouts."""
    timeout = max(conf.PUSH_HEARTBEAT, 0.1)
    kwargs = {key: value for key, value in pool.connection_kwargs.items() if not key.startswith(_RESP3_ONLY)}
    kwargs |= {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A health check would read the PING reply itself, and fail on a subscriber's.
        "health_check_interval": 0,
        # The announcements come as plain pub/sub messages, whatever the pool speaks.
        "protocol": 2,
    }
    try:
        connection = pool.connection_class(**kwargs)
    except TypeError:  # redis-py before 5 speaks only RESP2 and has no such argument
        del kwargs["protocol"]
        connection = pool.connection_class(**kwargs)
    opened.append(connection)
    connection.connect()
    return connection


def _disconnect(connections: list[Any]) -> None:
    for connection in connections:
        try:
            connection.disconnect()
        except Exception:  # already broken: nothing more to release
            pass


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
