"""Reservations against limits that every process shares: requests in flight, and spend.

An *account* is one limit: a key's requests in flight (``max_concurrent``), or a key's or an
owner's budget in one period. A request *reserves* amounts on its accounts at once, all or
none, and is admitted only while, on each one, what was spent plus what is reserved plus its
own amount stays within the limit. It *settles* exactly once: its reservations go, and what
it really spent is added to the accounts' spent counters. A reservation is a lease: one its
process never settles (a worker killed) frees its amount when the lease runs out.

On Redis, reserving and settling are one Lua script each, run on the master: atomic, so
processes racing for the last of a budget never admit more than its limit between them. On
any other cache the same steps run under a lock of this process: exact for the local-memory
cache (which only this process sees), racy between processes sharing another kind of cache.

An account may have an *alert*: the one settlement that takes its spent amount to
``alert_at`` reports it (``Reservation.settle``'s answer), once in the account's life.

Amounts are integers: requests, or money in ``UNITS_PER_CURRENCY`` (millionths).

A spent counter that the cache lost (a flush, an eviction, a restart) is filled again from the
database before anything is admitted against it (``Account.seed``); what the database does not
have yet, usage a process has not written, is the part such a loss can forget.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from .decisions import get_cache, get_decision_cache
from .decisions.redis import RedisBackend

logger = logging.getLogger("drf_llm_keys")

UNITS_PER_CURRENCY = 1_000_000

# Per account: its spent counter, its reservations' amounts (a hash by reservation id) and
# their lease deadlines (a sorted set, milliseconds), all under the account's name.
_RESERVE = """
local now, id, deadline, lease = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local accounts = #KEYS / 4
local near = 0
for i = 0, accounts - 1 do
  local spent_key, amounts = KEYS[4 * i + 1], KEYS[4 * i + 2]
  local leases, alerted = KEYS[4 * i + 3], KEYS[4 * i + 4]
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    redis.call('HDEL', amounts, gone)
    redis.call('ZREM', leases, gone)
  end
  local amount, limit = tonumber(ARGV[5 + 4 * i]), tonumber(ARGV[6 + 4 * i])
  local seeded, alert_at = ARGV[7 + 4 * i], tonumber(ARGV[8 + 4 * i])
  local spent = redis.call('GET', spent_key)
  if seeded == '1' and not spent then
    return {'seed', i}
  end
  local used = tonumber(spent) or 0
  for _, held in ipairs(redis.call('HVALS', amounts)) do
    used = used + tonumber(held)
  end
  if used + amount > limit then
    return {'over', i, tostring(used)}
  end
  if alert_at > 0 and used + amount >= alert_at and redis.call('EXISTS', alerted) == 0 then
    near = 1
  end
end
for i = 0, accounts - 1 do
  local amounts, leases = KEYS[4 * i + 2], KEYS[4 * i + 3]
  redis.call('HSET', amounts, id, ARGV[5 + 4 * i])
  redis.call('ZADD', leases, deadline, id)
  for _, name in ipairs({amounts, leases}) do
    if redis.call('PTTL', name) < lease then
      redis.call('PEXPIRE', name, lease)
    end
  end
end
return {'ok', near}
"""

# Returns, per account, its new spent total if this settlement raised its alert, else -1.
_SETTLE = """
local id = ARGV[1]
local raised = {}
for i = 0, #KEYS / 4 - 1 do
  local spent_key, amounts = KEYS[4 * i + 1], KEYS[4 * i + 2]
  local leases, alerted = KEYS[4 * i + 3], KEYS[4 * i + 4]
  redis.call('HDEL', amounts, id)
  redis.call('ZREM', leases, id)
  local add, ttl = tonumber(ARGV[2 + 4 * i]), tonumber(ARGV[3 + 4 * i])
  local seeded, alert_at = ARGV[4 + 4 * i], tonumber(ARGV[5 + 4 * i])
  raised[i + 1] = -1
  -- A lost counter is seeded from the database, which counts this spend too: not recreated here.
  if add > 0 and (seeded == '0' or redis.call('EXISTS', spent_key) == 1) then
    local total = redis.call('INCRBY', spent_key, add)
    if ttl > 0 then
      redis.call('PEXPIRE', spent_key, ttl)
    end
    if alert_at > 0 and total >= alert_at then
      local mark
      if ttl > 0 then
        mark = redis.call('SET', alerted, 1, 'NX', 'PX', ttl)
      else
        mark = redis.call('SET', alerted, 1, 'NX')
      end
      if mark then
        raised[i + 1] = total
      end
    end
  end
end
return raised
"""


class Account(NamedTuple):
    """One limit, named in the shared cache by ``name``."""

    name: str
    limit: int
    # When its spent counter ends (a ``time.time()`` value: the end of a budget's period);
    # None: never.
    ends_at: float | None = None
    # Its spent amount, from the database, for when the cache has lost the counter; None for
    # an account nothing is spent on (requests in flight).
    seed: Callable[[], int] | None = None
    # The spent amount that raises its alert, once for the account's life; None: no alert.
    alert_at: int | None = None


class Refused(Exception):
    """An account has no room for the amount asked."""

    def __init__(self, account: Account, used: int) -> None:
        super().__init__(f"{account.name}: {used} of {account.limit} used")
        self.account = account
        self.used = used


class Unavailable(Exception):
    """The shared cache could not be reached: nothing is known about the accounts."""


class Reservation:
    """Amounts held on accounts until ``settle``; settled once, whoever calls it again."""

    def __init__(self, ledger: Ledger, holds: Sequence[tuple[Account, int]]) -> None:
        self.ledger = ledger
        self.holds = list(holds)
        self.id = uuid.uuid4().hex
        # Whether its settlement may raise an alert: when reserved, what an account had in use
        # reached its ``alert_at`` and the alert was not raised yet.
        self.near_alert = False
        self.settled = False
        self._lock = threading.Lock()

    def settle(self, spent: Mapping[str, int] | None = None) -> dict[str, int]:
        """Free the reservations and add ``spent`` (by account name) to the spent counters.

        Returns the accounts whose alert this settlement raised, with their new spent totals.
        The first call does it; later ones return ``{}``. A cache that cannot be reached is
        logged by the caller: the reservations then run out with their lease, the spend is
        in the usage written.
        """
        with self._lock:
            if self.settled:
                return {}
            self.settled = True
        return self.ledger.settle(self, spent or {})


class Ledger:
    """Accounts kept with the cache's own API, under a lock of this process."""

    _lock = threading.Lock()

    def reserve(self, holds: Sequence[tuple[Account, int]], lease: float) -> Reservation:
        """Hold each amount on its account, all or none; ``Refused`` when one has no room."""
        reservation = Reservation(self, holds)
        try:
            self._reserve(reservation, lease)
        except Refused:
            raise
        except Exception as exc:
            raise Unavailable(str(exc)) from exc
        return reservation

    def standing(self, accounts: Sequence[Account]) -> list[tuple[int | None, int]]:
        """``(spent, reserved)`` of each account now, spent None while the cache has no
        counter (nothing spent, or the counter lost); ``Unavailable`` without the cache."""
        try:
            return self._standing(accounts)
        except Exception as exc:
            raise Unavailable(str(exc)) from exc

    def settle(self, reservation: Reservation, spent: Mapping[str, int]) -> dict[str, int]:
        try:
            return self._settle(reservation, spent)
        except Exception as exc:
            raise Unavailable(str(exc)) from exc

    def _reserve(self, reservation: Reservation, lease: float) -> None:
        cache = get_cache()
        now = time.time()
        for account, _ in reservation.holds:
            if account.seed is not None and cache.get(account.name + ":s") is None:
                cache.add(account.name + ":s", account.seed(), _timeout(account, now))
        with self._lock:
            held = {}
            for account, amount in reservation.holds:
                holds = _live_holds(cache, account, now)
                used = int(cache.get(account.name + ":s") or 0) + sum(hold[0] for hold in holds.values())
                if used + amount > account.limit:
                    raise Refused(account, used)
                if (
                    account.alert_at
                    and used + amount >= account.alert_at
                    and cache.get(account.name + ":a") is None
                ):
                    reservation.near_alert = True
                holds[reservation.id] = (amount, now + lease)
                held[account] = holds
            for account, holds in held.items():
                _keep_holds(cache, account, holds, now)

    def _settle(self, reservation: Reservation, spent: Mapping[str, int]) -> dict[str, int]:
        cache = get_cache()
        now = time.time()
        raised = {}
        with self._lock:
            for account, _ in reservation.holds:
                holds = _live_holds(cache, account, now)
                if holds.pop(reservation.id, None) is not None:
                    _keep_holds(cache, account, holds, now)
                add = spent.get(account.name, 0)
                # A lost counter is seeded from the database, which counts this spend too.
                if add > 0 and (account.seed is None or cache.get(account.name + ":s") is not None):
                    total = int(cache.get(account.name + ":s") or 0) + add
                    cache.set(account.name + ":s", total, _timeout(account, now))
                    alert_at = account.alert_at
                    if (
                        alert_at
                        and total >= alert_at
                        and cache.add(account.name + ":a", 1, _timeout(account, now))
                    ):
                        raised[account.name] = total
        return raised

    def _standing(self, accounts: Sequence[Account]) -> list[tuple[int | None, int]]:
        cache = get_cache()
        now = time.time()
        answer: list[tuple[int | None, int]] = []
        for account in accounts:
            reserved = sum(hold[0] for hold in _live_holds(cache, account, now).values())
            spent = cache.get(account.name + ":s")
            answer.append((None if spent is None else int(spent), reserved))
        return answer


class RedisLedger(Ledger):
    """Accounts on the Redis master, each step one Lua script.

    A settlement that cannot raise an alert is written without waiting for its reply, on a
    connection of the ledger's own (``Unanswered``): a request with a budget or a cap then
    waits for Redis once, to be admitted. The settlement leaves before the response does;
    this process reads its replies before it reserves or reads again, so it always sees its
    own settlements done. Another process sees one once Redis has run it, microseconds
    later; a client whose next request reaches Redis first (Redis stalled in between) finds
    its slot still taken, a 429 that tells it to retry.
    """

    def __init__(self, backend: RedisBackend) -> None:
        # Weakly: the ledger lives as long as its backend (``get_ledger``), not longer.
        self._backend = weakref.ref(backend)
        self.unanswered = Unanswered(self)

    @property
    def backend(self) -> RedisBackend:
        backend = self._backend()
        if backend is None:
            raise Unavailable("the cache was set up again")
        return backend

    def _keys(self, accounts: Sequence[Account]) -> list[str]:
        make_key = self.backend.cache.make_key
        return [make_key(account.name + part) for account in accounts for part in (":s", ":h", ":l", ":a")]

    def _reserve(self, reservation: Reservation, lease: float) -> None:
        self.unanswered.drain()
        master = self.backend.master()
        script = master.register_script(_RESERVE)
        accounts = [account for account, _ in reservation.holds]
        keys = self._keys(accounts)
        for _ in range(2):  # a lost counter is seeded once, then the reservation tried again
            now_ms = int(time.time() * 1000)
            lease_ms = max(1, int(lease * 1000))
            args: list[Any] = [now_ms, reservation.id, now_ms + lease_ms, lease_ms]
            for account, amount in reservation.holds:
                args += [amount, account.limit, 0 if account.seed is None else 1, account.alert_at or 0]
            answer = script(keys=keys, args=args)
            verdict = _text(answer[0])
            if verdict == "ok":
                reservation.near_alert = int(answer[1]) == 1
                return
            account = accounts[int(answer[1])]
            if verdict == "over":
                raise Refused(account, int(_text(answer[2])))
            assert account.seed is not None  # "seed": asked of seeded accounts only
            ttl = _timeout(account, now_ms / 1000)
            master.set(keys[4 * int(answer[1])], account.seed(), nx=True, ex=ttl)
        raise Unavailable("the spent counter could not be seeded")

    def _settle(self, reservation: Reservation, spent: Mapping[str, int]) -> dict[str, int]:
        accounts = [account for account, _ in reservation.holds]
        now = time.time()
        keys = self._keys(accounts)
        args: list[Any] = [reservation.id]
        for account in accounts:
            ttl = _timeout(account, now)
            # Only a settlement whose reply is read may raise an alert: else it would be lost.
            alert_at = (account.alert_at or 0) if reservation.near_alert else 0
            args += [
                spent.get(account.name, 0),
                0 if ttl is None else ttl * 1000,
                0 if account.seed is None else 1,
                alert_at,
            ]
        if not reservation.near_alert and self.unanswered.send(("EVAL", _SETTLE, len(keys), *keys, *args)):
            return {}
        raised = self.backend.master().register_script(_SETTLE)(keys=keys, args=args)
        return {
            account.name: int(total)
            for account, total in zip(accounts, raised, strict=True)
            if int(total) >= 0
        }

    def _standing(self, accounts: Sequence[Account]) -> list[tuple[int | None, int]]:
        self.unanswered.drain()
        pipeline = self.backend.master().pipeline(transaction=False)
        keys = self._keys(accounts)
        now_ms = int(time.time() * 1000)
        for index in range(len(accounts)):
            spent, amounts, leases = keys[4 * index : 4 * index + 3]
            pipeline.get(spent)
            pipeline.hgetall(amounts)
            pipeline.zrangebyscore(leases, now_ms, "+inf")
        found = pipeline.execute()
        answer: list[tuple[int | None, int]] = []
        for index in range(len(accounts)):
            spent, amounts, live = found[3 * index : 3 * index + 3]
            live_ids = {_text(rid) for rid in live}
            reserved = sum(int(value) for rid, value in amounts.items() if _text(rid) in live_ids)
            answer.append((None if spent is None else int(spent), reserved))
        return answer


class Unanswered:
    """Writes sent to the Redis master without waiting for their replies, on a connection of
    this process's own. Each send first reads the replies that have come: an error is logged,
    and a connection the server closed is opened again before anything is written to it."""

    def __init__(self, ledger: RedisLedger) -> None:
        self.ledger = ledger
        self.lock = threading.Lock()
        self.connection: Any = None
        self.pid = 0
        self.waiting = 0  # replies not read yet
        _unanswered.add(self)

    def send(self, command: tuple[Any, ...]) -> bool:
        """Write ``command``; False if it could not be written (the caller then waits)."""
        with self.lock:
            for attempt in range(2):  # once more on a new connection if the server closed this one
                try:
                    if self.connection is None or self.pid != os.getpid():  # a forked child opens its own
                        pool = self.ledger.backend.master().connection_pool
                        self.connection = pool.connection_class(**pool.connection_kwargs)
                        self.pid, self.waiting = os.getpid(), 0
                    self._read_replies(timeout=0)
                    self.connection.send_command(*command, check_health=False)
                except Exception:
                    self._drop()
                    if attempt:
                        logger.warning(
                            "drf_llm_keys: a settlement could not be sent; waiting for it", exc_info=True
                        )
                        return False
                else:
                    self.waiting += 1
                    return True
        return False

    def drain(self) -> None:
        """Read every reply still due: before this process reads or reserves, so that it sees
        its own settlements done; and at exit, where unread replies would make the close a
        reset, which can drop what is still to be sent."""
        if not self.waiting:
            return
        with self.lock:
            if self.connection is None or self.pid != os.getpid():
                return
            try:
                self._read_replies(timeout=None)
            except Exception:
                logger.warning("drf_llm_keys: settlements sent may not have reached Redis", exc_info=True)
                self._drop()

    def _read_replies(self, timeout: float | None) -> None:
        """The replies that have come (``timeout`` 0), or all that are due (None)."""
        while self.waiting if timeout is None else self.connection.can_read(timeout):
            if not self.waiting:  # readable with nothing due: the server closed it
                raise ConnectionError("the connection was closed by the server")
            self.waiting -= 1
            try:
                self.connection.read_response()
            except ResponseError:  # that script failed on Redis (out of memory, say): its lease frees it
                logger.warning("drf_llm_keys: a settlement failed on Redis", exc_info=True)

    def _drop(self) -> None:
        connection, self.connection, self.waiting = self.connection, None, 0
        if connection is not None and self.pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.disconnect()


_unanswered: weakref.WeakSet[Unanswered] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    for unanswered in list(_unanswered):
        unanswered.drain()


_ledgers: weakref.WeakKeyDictionary[RedisBackend, RedisLedger] = weakref.WeakKeyDictionary()
_ledgers_lock = threading.Lock()


def get_ledger() -> Ledger:
    """The ledger on the library's cache (``CACHE_ALIAS``): one per Redis backend, which
    keeps its connection."""
    backend = get_decision_cache().backend
    if not isinstance(backend, RedisBackend):
        return _local
    with _ledgers_lock:
        found = _ledgers.get(backend)
        if found is None:
            found = _ledgers[backend] = RedisLedger(backend)
        return found


def to_units(amount: Decimal, *, up: bool = False) -> int:
    """Money as the ledger counts it; a reservation rounds up, a settlement to nearest."""
    scaled = amount * UNITS_PER_CURRENCY
    return int(scaled.to_integral_value(ROUND_CEILING if up else ROUND_HALF_UP))


def from_units(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_CURRENCY


def _timeout(account: Account, now: float) -> int | None:
    """Seconds the spent counter has left: to the end of its period; None: forever."""
    return None if account.ends_at is None else max(1, int(account.ends_at - now) + 1)


def _live_holds(cache: Any, account: Account, now: float) -> dict[str, tuple[int, float]]:
    """The reservations on ``account`` whose lease has not run out, by id."""
    holds: dict[str, tuple[int, float]] = cache.get(account.name + ":h") or {}
    return {rid: hold for rid, hold in holds.items() if hold[1] > now}


def _keep_holds(cache: Any, account: Account, holds: dict[str, tuple[int, float]], now: float) -> None:
    if holds:
        cache.set(account.name + ":h", holds, max(1, int(max(hold[1] for hold in holds.values()) - now) + 1))
    else:
        cache.delete(account.name + ":h")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_local = Ledger()
