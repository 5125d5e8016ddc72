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

Amounts are integers: requests, or money in ``UNITS_PER_CURRENCY`` (millionths).

A spent counter that the cache lost (a flush, an eviction, a restart) is filled again from the
database before anything is admitted against it (``Account.seed``); what the database does not
have yet, usage a process has not written, is the part such a loss can forget.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from .decisions import get_cache, get_decision_cache
from .decisions.redis import RedisBackend

UNITS_PER_CURRENCY = 1_000_000

# Per account: its spent counter, its reservations' amounts (a hash by reservation id) and
# their lease deadlines (a sorted set, milliseconds), all under the account's name.
_RESERVE = """
local now, id, deadline, lease = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local accounts = #KEYS / 3
for i = 0, accounts - 1 do
  local spent_key, amounts, leases = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    redis.call('HDEL', amounts, gone)
    redis.call('ZREM', leases, gone)
  end
  local amount, limit, seeded = tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i]), ARGV[7 + 3 * i]
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
end
for i = 0, accounts - 1 do
  local amounts, leases = KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('HSET', amounts, id, ARGV[5 + 3 * i])
  redis.call('ZADD', leases, deadline, id)
  for _, name in ipairs({amounts, leases}) do
    if redis.call('PTTL', name) < lease then
      redis.call('PEXPIRE', name, lease)
    end
  end
end
return {'ok'}
"""

_SETTLE = """
local id = ARGV[1]
local totals = {}
for i = 0, #KEYS / 3 - 1 do
  local spent_key, amounts, leases = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('HDEL', amounts, id)
  redis.call('ZREM', leases, id)
  local add, ttl, seeded = tonumber(ARGV[2 + 3 * i]), tonumber(ARGV[3 + 3 * i]), ARGV[4 + 3 * i]
  local total = -1
  -- A lost counter is seeded from the database, which counts this spend too: not recreated here.
  if add > 0 and (seeded == '0' or redis.call('EXISTS', spent_key) == 1) then
    total = redis.call('INCRBY', spent_key, add)
    if ttl > 0 then
      redis.call('PEXPIRE', spent_key, ttl)
    end
  end
  totals[i + 1] = total
end
return totals
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
        self.settled = False
        self._lock = threading.Lock()

    def settle(self, spent: Mapping[str, int] | None = None) -> dict[str, int]:
        """Free the reservations and add ``spent`` (by account name) to the spent counters.

        Returns the accounts' new spent totals, for those it added to. The first call does
        it; later ones return ``{}``. A cache that cannot be reached is logged by the caller:
        the reservations then run out with their lease, the spend is in the usage written.
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

    def mark_once(self, name: str, timeout: int | None) -> bool:
        """Set the mark ``name`` unless it is set: True for the one caller that set it."""
        try:
            return bool(get_cache().add(name, 1, timeout))
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
                holds[reservation.id] = (amount, now + lease)
                held[account] = holds
            for account, holds in held.items():
                _keep_holds(cache, account, holds, now)

    def _settle(self, reservation: Reservation, spent: Mapping[str, int]) -> dict[str, int]:
        cache = get_cache()
        now = time.time()
        totals = {}
        with self._lock:
            for account, _ in reservation.holds:
                holds = _live_holds(cache, account, now)
                if holds.pop(reservation.id, None) is not None:
                    _keep_holds(cache, account, holds, now)
                add = spent.get(account.name, 0)
                # A lost counter is seeded from the database, which counts this spend too.
                if add > 0 and (account.seed is None or cache.get(account.name + ":s") is not None):
                    totals[account.name] = int(cache.get(account.name + ":s") or 0) + add
                    cache.set(account.name + ":s", totals[account.name], _timeout(account, now))
        return totals

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
    """Accounts on the Redis master, each step one Lua script."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    def _keys(self, accounts: Sequence[Account]) -> list[str]:
        make_key = self.backend.cache.make_key
        return [make_key(account.name + part) for account in accounts for part in (":s", ":h", ":l")]

    def _reserve(self, reservation: Reservation, lease: float) -> None:
        master = self.backend.master()
        script = master.register_script(_RESERVE)
        accounts = [account for account, _ in reservation.holds]
        keys = self._keys(accounts)
        for _ in range(2):  # a lost counter is seeded once, then the reservation tried again
            now_ms = int(time.time() * 1000)
            lease_ms = max(1, int(lease * 1000))
            args: list[Any] = [now_ms, reservation.id, now_ms + lease_ms, lease_ms]
            for account, amount in reservation.holds:
                args += [amount, account.limit, 0 if account.seed is None else 1]
            answer = script(keys=keys, args=args)
            verdict = _text(answer[0])
            if verdict == "ok":
                return
            account = accounts[int(answer[1])]
            if verdict == "over":
                raise Refused(account, int(_text(answer[2])))
            assert account.seed is not None  # "seed": asked of seeded accounts only
            ttl = _timeout(account, now_ms / 1000)
            master.set(keys[3 * int(answer[1])], account.seed(), nx=True, ex=ttl)
        raise Unavailable("the spent counter could not be seeded")

    def _settle(self, reservation: Reservation, spent: Mapping[str, int]) -> dict[str, int]:
        master = self.backend.master()
        accounts = [account for account, _ in reservation.holds]
        now = time.time()
        args: list[Any] = [reservation.id]
        for account in accounts:
            ttl = _timeout(account, now)
            args += [
                spent.get(account.name, 0),
                0 if ttl is None else ttl * 1000,
                0 if account.seed is None else 1,
            ]
        totals = master.register_script(_SETTLE)(keys=self._keys(accounts), args=args)
        return {
            account.name: int(total)
            for account, total in zip(accounts, totals, strict=True)
            if int(total) >= 0
        }

    def _standing(self, accounts: Sequence[Account]) -> list[tuple[int | None, int]]:
        pipeline = self.backend.master().pipeline(transaction=False)
        keys = self._keys(accounts)
        now_ms = int(time.time() * 1000)
        for index in range(len(accounts)):
            spent, amounts, leases = keys[3 * index : 3 * index + 3]
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


def get_ledger() -> Ledger:
    """The ledger on the library's cache (``CACHE_ALIAS``)."""
    backend = get_decision_cache().backend
    return RedisLedger(backend) if isinstance(backend, RedisBackend) else _local


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
