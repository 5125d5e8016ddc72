"""Zero-round-trip warm requests: Redis tells every process when a generation changes.

Two connections of this process's own: a subscriber to Redis's invalidation channel, and a
tracker that turns on client-side caching in broadcast mode (``CLIENT TRACKING ... BCAST``)
for the generation prefix; the tracker also sends this process's fills, whose replies it
reads later (a cold request waits for no write). A generation read from the master while
both connections answer the heartbeat is trusted until Redis announces its change. Why
that is still "at once", and every case that suspends the trust (an error, a fork, a
missed heartbeat on either connection, a master that changed): docs/design.md, "Push invalidation".

Writers also publish each new token (``topology.write``), just before Redis announces the
change; a process that held the generation learns it, and reloads without reading it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.core.cache import caches
from redis.exceptions import ResponseError

from ..conf import conf
from . import topology
from .names import generation_name, generation_prefix

logger = logging.getLogger("drf_llm_keys")

INVALIDATION_CHANNEL = "__redis__:invalidate"
# Ends the tag of a generation learned from a writer's message rather than read: see ``learn``.
LEARNED = "+"
# The tag of a generation this process replaced: no entry has it (see ``forget``).
RETIRED = ""
# Connection options (redis-py 8) that a RESP2 connection refuses.
_RESP3_ONLY = ("maint_notifications", "oss_cluster_maint_notifications")
# Seconds between two attempts to open a channel, after one failed.
RETRY_DELAY = 5.0


class Channel:
    """One process's subscription to the announcements of one cache's generation keys."""

    def __init__(
        self, gen_prefix: str, made_prefix: str, connections: list[Any], epoch: str, tokens_channel: str
    ) -> None:
        self.epoch = epoch  # of the master these connections reach (topology)
        self.gen_prefix = gen_prefix  # our name of a generation key, before the cache's key function
        self.made_prefix = made_prefix  # the same, as Redis sees it
        self.tokens_channel = tokens_channel  # where writers publish new tokens (topology.write)
        self.subscriber, self.tracker = connections
        self.lock = threading.Lock()
        self.alive = True
        # Generation name -> the tag this process knows to be current, least recently used first.
        self.current: dict[str, str] = {}
        # Generation name -> the last token published for it since the last announcement.
        self.published: dict[str, str] = {}
        # Generations whose learned tag no reload has used yet (``claim``).
        self.learned: set[str] = set()
        self.announcements = 0
        # Everything Redis announced before this moment has been read.
        self.proven_at = time.monotonic()
        self.ping_sent_at: float | None = None
        # Which connections have answered the ping in flight: both must, to prove the channel.
        self.answered: set[str] = set()
        self.lapse_logged = False

    # --- what store.lookup asks ------------------------------------------------------

    def known(self, gen_name: str) -> str | None:
        """The tag that entries of ``gen_name`` are usable under now (``usable``), without
        asking Redis; None when unknown, or while the channel is not proven."""
        with self.lock:
            now = time.monotonic()
            if not self._read(now) or now - self.proven_at > conf.PUSH_HEARTBEAT:
                return None
            tag = self.current.pop(gen_name, None)
            if tag is not None:  # least recently used first: a hit moves it to the end
                self.current[gen_name] = tag
            return tag

    def claim(self, gen_name: str, known: str) -> bool:
        """Whether this lookup may reload without reading the generation: the first after
        the announcement that taught ``known``. Every process that held the generation
        does the same, so the first reload costs a query in each; the entries that follow
        are read, and come from the process that loaded them first."""
        with self.lock:
            if gen_name not in self.learned or self.current.get(gen_name) != known:
                return False
            self.learned.remove(gen_name)
            return True

    def trusts(self, gen_name: str, tag: str) -> bool:
        """Whether an entry tagged ``tag`` is still current, without asking Redis."""
        return usable(tag, self.known(gen_name))

    def proven_epoch(self) -> str | None:
        """The master's epoch, if the channel is up and proven now: read after a GET, it
        says that the GET reached the server run this channel connected to."""
        with self.lock:
            now = time.monotonic()
            if not self._read(now) or now - self.proven_at > conf.PUSH_HEARTBEAT:
                return None
            return self.epoch

    def mark(self) -> int | None:
        """Taken before a GET of generations: ``confirm`` needs it."""
        with self.lock:
            return self.announcements if self._read() else None

    def confirm(self, gen_name: str, token: str, mark: int | None) -> None:
        """Record a generation read from Redis after ``mark``, unless anything was announced
        since: that announcement may be of a write Redis ran after the read."""
        if mark is None:
            return
        with self.lock:
            if not self._read() or self.announcements != mark:
                return
            self.current[gen_name] = token
            while len(self.current) > conf.LOCAL_ENTRIES:
                oldest = next(iter(self.current))
                del self.current[oldest]
                self.learned.discard(oldest)

    def fill(self, cache: Any, entry_name: str, value: Any, new: tuple[str, str] | None = None) -> bool:
        """Send the write of a decision entry on the tracking connection, and leave its
        reply for a later ``_read``; False when it was not sent. A write that Redis runs
        late, or not at all, is safe: the entry's tag decides whether it is used.

        ``new``, a generation's name and a new token, is written first unless the name has
        one (``SET NX``): an entry tagged with a token that lost that race is never used."""
        writes = [(entry_name, value, ())] if new is None else [(*new, ("NX",)), (entry_name, value, ())]
        try:
            commands = [
                ("SET", *topology.encode(cache, name, v), "EX", conf.CACHE_TIMEOUT, *nx)
                for name, v, nx in writes
            ]
        except Exception:  # the caller's plain write logs it
            return False
        with self.lock:
            # Not _read(): the lookup polled the channel just before (trusts, mark, confirm).
            if not self.alive:
                return False
            try:
                # One write for both commands: a send costs a system call and Redis's wake-up.
                self.tracker.send_packed_command(self.tracker.pack_commands(commands), check_health=False)
            except Exception:
                logger.warning("drf_llm_keys: invalidation channel lost: one GET per request", exc_info=True)
                self.close()
                return False
            return True

    def forget(self, gen_names: set[str]) -> None:
        """This process replaced these generations (or failed to): trust none of them, but
        learn the new tokens from their announcement, as another process would."""
        with self.lock:
            for name in gen_names:
                if name in self.current:
                    self.current[name] = RETIRED
                    self.learned.discard(name)

    # --- the connections ---------------------------------------------------------------

    def _read(self, now: float | None = None) -> bool:
        """Apply every announcement that has arrived (and, given the time, keep the
        heartbeat going); False once the channel is down."""
        if not self.alive:
            return False
        try:
            while self.tracker.can_read(0):
                # The heartbeat's PONG, or a fill's OK (nil: a generation that existed
                # already); at its end, read_response raises.
                try:
                    answer = self.tracker.read_response()
                except ResponseError:  # a fill refused (out of memory, say): only that is lost
                    logger.warning("drf_llm_keys: cache write failed", exc_info=True)
                    continue
                reply = "OK" if answer is None else _text(answer).upper()
                if reply == "PONG":
                    self._answered("tracker")
                elif reply != "OK":
                    raise ConnectionError("unexpected reply on the tracking connection")
            while self.subscriber.can_read(0):
                self._apply(self.subscriber.read_response())
            if now is not None:
                self._heartbeat(now)
        except Exception:
            logger.warning("drf_llm_keys: invalidation channel lost: one GET per request", exc_info=True)
            self.close()
            return False
        return True

    def _apply(self, message: Any) -> None:
        kind = _text(message[0])
        if kind == "message" and _text(message[1]) == self.tokens_channel:
            made, _, token = _text(message[2]).rpartition(" ")
            if made.startswith(self.made_prefix) and len(self.published) < conf.LOCAL_ENTRIES:
                self.published[self.gen_prefix + made[len(self.made_prefix) :]] = token
        elif kind == "message":
            self.announcements += 1
            published, self.published = self.published, {}
            keys = message[2]
            if keys is None:  # FLUSHDB or FLUSHALL
                self.current.clear()
                self.learned.clear()
                return
            for key in keys:
                made = _text(key)
                if made.startswith(self.made_prefix):
                    name = self.gen_prefix + made[len(self.made_prefix) :]
                    self.learned.discard(name)
                    if self.current.pop(name, None) is not None and name in published:
                        self.current[name] = self.learn(published[name])
                        self.learned.add(name)
        elif kind == "pong":
            self._answered("subscriber")

    def learn(self, token: str) -> str:
        """The tag of a generation learned from its writer's message, usable only by entries
        loaded after this announcement (``usable``).

        Redis sends a writer's messages before its announcement, so the token is most likely
        the generation now; but a write by anything that does not publish (an older version
        of this library, say) may have landed after it, in the same announcement. The rows of
        an entry loaded after the announcement have every write it covers, so the entry is
        right under this tag whatever the generation is; and any later write is announced
        again. An entry read or filled before it, under the same token, is not usable under
        this tag: only under the token's plain tag, once a read confirms that. The plain tag
        is what the shared entry is written under: rows loaded after the token was written
        are right for anyone who reads that token as the generation."""
        return topology.tagged(token, self.epoch) + LEARNED

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
            # Timed from the ping, not from the last proof: after an idle spell the first
            # request sends a ping that has had no time to be answered yet.
            silent = {"subscriber", "tracker"} - self.answered
            logger.warning(
                "drf_llm_keys: no answer from the invalidation channel's %s within PUSH_HEARTBEAT: "
                "one GET per request until it answers",
                " and ".join(sorted(silent)),
            )
            self.lapse_logged = True

    def close(self) -> None:
        self.alive = False
        _disconnect([self.subscriber, self.tracker])


# --- one channel per process and cache alias ---------------------------------------------


class Push:
    """This process's channel for one cache alias: opened on first use, reopened after a
    failure (at most every ``RETRY_DELAY`` seconds), or never when the cache cannot announce."""

    def __init__(self) -> None:
        self.opened: Channel | None = None
        self.unavailable: float | None = None  # when to try again, after a failure
        self.open_lock = threading.Lock()
        # False once Redis refused the write that publishes tokens (an ACL without EVAL).
        self.publishes = True

    def channel(self) -> Channel | None:
        """The live channel for the configured cache, or None (then: one GET each).

        Nothing here checks the configuration: a change of ``CACHES`` or of this library's
        settings drops this object with its ``DecisionCache`` (``decisions.reset``)."""
        if not conf.PUSH_INVALIDATION:
            return None
        current = self.opened
        if current is not None and current.alive:
            return current
        retry_after = self.unavailable
        if retry_after is not None and time.monotonic() < retry_after:
            return None
        return self._open()

    def write(self, cache: Any, tokens: dict[str, str]) -> None:
        """Write new generations; with push on, publish their tokens too, for the channels
        of every process (``Channel.learn``). Raises when the cache could not be written."""
        publish = conf.PUSH_INVALIDATION and self.publishes
        try:
            topology.write(cache, tokens, conf.CACHE_TIMEOUT, publish)
        except ResponseError as exc:
            if not publish:
                raise
            topology.write(cache, tokens, conf.CACHE_TIMEOUT)  # out of memory, say: fails too
            self.publishes = False
            logger.warning(
                "drf_llm_keys: Redis refused the script that publishes new generations (%s): "
                "after a change, every process reads the new generation",
                exc,
            )

    def forget(self, gen_names: set[str]) -> None:
        current = self.opened
        if current is not None:
            current.forget(gen_names)

    def close(self) -> None:
        with self.open_lock:
            if self.opened is not None:
                self.opened.close()
                self.opened = None

    def _open(self) -> Channel | None:
        with self.open_lock:
            if self.opened is not None:
                if self.opened.alive:
                    return self.opened
                self.opened.close()
                self.opened = None
            try:
                self.opened = _connect(conf.CACHE_ALIAS)
            except Unsupported as exc:
                logger.log(exc.level, "drf_llm_keys: no invalidation channel (%s): one GET per request", exc)
                self.unavailable = float("inf")
            except Exception:
                logger.warning("drf_llm_keys: could not open the invalidation channel", exc_info=True)
                self.unavailable = time.monotonic() + RETRY_DELAY
            else:
                self.unavailable = None
            return self.opened


class Unsupported(Exception):
    """The cache cannot announce changes: not Redis, sharded, or Redis older than 6."""

    # A cache that cannot do it is the project's choice; a Redis that refuses is worth a warning.
    def __init__(self, message: str, level: int = logging.INFO) -> None:
        super().__init__(message)
        self.level = level


def _connect(alias: str) -> Channel:
    cache = caches[alias]
    try:
        # The master's pool: with Sentinel, its connections find the current master.
        pool = topology.master_client(cache).connection_pool
    except topology.Unsupported as exc:
        raise Unsupported(str(exc)) from None
    except AttributeError:  # a client without one pool (redis-py's RedisCluster)
        raise Unsupported("the cache's Redis client has no single connection pool") from None
    gen_prefix = generation_prefix()
    made_prefix = str(cache.make_key(gen_prefix))
    if not str(cache.make_key(generation_name("x"))).startswith(made_prefix):
        raise Unsupported("the cache's KEY_FUNCTION does not keep a common prefix")
    opened: list[Any] = []
    try:
        subscriber = _connection(pool, opened)
        tracker = _connection(pool, opened)
        subscriber.send_command("CLIENT", "ID")
        subscriber_id = subscriber.read_response()
        tokens_channel = topology.tokens_channel(cache)
        subscriber.send_command("SUBSCRIBE", INVALIDATION_CHANNEL, tokens_channel)
        subscriber.read_response()
        subscriber.read_response()
        # Before tracking starts: every generation read from now on is of this server run.
        tracker.send_command("INFO", "server")
        server = topology.info_fields(tracker.read_response())
        tracker.send_command("INFO", "replication")
        epoch = topology.epoch_of(server, topology.info_fields(tracker.read_response()))
        tracker.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", subscriber_id, "BCAST", "PREFIX", made_prefix
        )
        tracker.read_response()
    except BaseException as exc:
        _disconnect(opened)
        if isinstance(exc, ResponseError):  # Redis before 6, or CLIENT denied by an ACL
            raise Unsupported(f"Redis refused client tracking: {exc}", logging.WARNING) from None
        raise
    return Channel(gen_prefix, made_prefix, [subscriber, tracker], epoch, tokens_channel)


def _connection(pool: Any, opened: list[Any]) -> Any:
    """A connection of our own, configured like the pool's, in RESP2 with short timeouts."""
    timeout = max(conf.PUSH_HEARTBEAT, 0.1)
    kwargs = {
        key: value
        for key, value in pool.connection_kwargs.items()
        # redis-py 8's maintenance notifications need RESP3; ours is a plain RESP2 subscriber.
        if not key.startswith(_RESP3_ONLY)
    }
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


def usable(tag: str, known: str | None) -> bool:
    """Whether an entry tagged ``tag`` may be used while ``known`` (``Channel.known``) is the
    generation's tag: a learned tag admits only entries loaded under it; a tag read from
    Redis admits those too, since the read proves the token is the generation."""
    return known is not None and (tag == known or tag == known + LEARNED)


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
