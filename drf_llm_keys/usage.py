"""Usage per key: requests and tokens counted in the process, written in batches.

Every request one of our keys authenticates is counted (``count_request``, called by the
authentication class); views add the tokens of each completion with ``record_tokens``. The
counts wait in the process, summed per (key, client, UTC day), and a background timer
writes them at most once per ``USAGE_FLUSH_INTERVAL`` seconds, as upserts that add to the
stored figures, so processes never overwrite each other's counts; the same write sets
each key's ``last_used_at`` (``last_used``). A request therefore costs no SQL and no cache
round trip for counting.

Each write is counted exactly once. A write has an id, made before its first try and
inserted first in its transaction (``models.UsageFlush``); a write that fails is tried
again as it was, under the same id, before any later counts: when its commit reached the
database but the answer was lost (a connection cut, a failover), the retry finds the id
taken and adds nothing. Ids are kept for ``FLUSH_ID_RETENTION``, longer than any process
keeps retrying (a retry later than that, after a day without the database, could count twice).

What can be lost: a process that dies without running ``atexit`` (SIGKILL, a crash, a
SIGTERM to a server that does not handle it) loses the counts of its last
``USAGE_FLUSH_INTERVAL`` seconds, plus whatever it could not write while the database was
down. The counts waiting in a process are bounded by ``USAGE_MAX_PENDING`` entries: once
half of them are taken the write starts at once rather than at the end of the interval, so
only a database that cannot keep up (or is down) makes counts beyond the bound dropped, and
logged.

Token budgets (``throttling.TokenRateThrottle``) are shared by every process at once:
``record_tokens`` adds the tokens to the key's counter in the shared cache, the one round
trip here, made after the view has its answer.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Generic, NamedTuple, TypeVar

from asgiref.sync import sync_to_async
from django.db import IntegrityError, OperationalError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.request import Request

from . import get_client_model, prices, windows
from .conf import conf
from .decisions import Entry
from .last_used import write_last_used
from .models import APIKey, KeyUsage, UsageFlush

logger = logging.getLogger("drf_llm_keys")

# Where count_request leaves what record_tokens and TokenRateThrottle need, on the request.
SUBJECT_ATTRIBUTE = "drf_llm_keys_usage"
# Where limits.admit() leaves the request's admission, which record_tokens tells the cost.
ADMISSION_ATTRIBUTE = "drf_llm_keys_admission"

FIGURES = ("requests", "prompt_tokens", "completion_tokens", "cost", "unpriced_tokens")
ZERO = Decimal(0)
EPOCH = datetime.date(1970, 1, 1)
SECONDS_PER_DAY = 86400
# Rows per INSERT: well below every backend's limit on parameters (SQLite's is the lowest).
BATCH_SIZE = 500
# Seconds between the tries of a write SQLite found locked by another process's (at most 1.5).
SQLITE_LOCKED_WAITS = (0.05, 0.1, 0.2, 0.4, 0.75)
# Backends with an atomic "insert or add" statement; others take the portable path.
UPSERT_VENDORS = frozenset({"postgresql", "sqlite", "mysql"})
# How long the id of a committed write is kept (see the module's docstring).
FLUSH_ID_RETENTION = datetime.timedelta(days=7)

ChunkT = TypeVar("ChunkT")

# (API key pk, client pk, UTC day as days since 1970-01-01)
CounterKey = tuple[Any, Any, int]
# The FIGURES of one counter, in that order: integers, and the cost, a Decimal.
Figures = list[Any]


class Batch(NamedTuple):
    """Counts taken for one write, under the id that makes its retries add nothing."""

    id: uuid.UUID
    counts: dict[CounterKey, Figures]
    last_used: dict[Any, float]


class Subject(NamedTuple):
    """Whose usage a request is: taken from the request once, usable after it has ended."""

    key_id: Any
    client_id: Any
    client: str  # the client's stored lookup value, which names it in TOKEN_RATES
    allowance: str  # APIKey.allowance: one token window for a key and its replacements


def count_request(request: HttpRequest | Request, api_key: APIKey, client: Entry) -> None:
    """Count a request authenticated by ``api_key``: in the process only, no I/O."""
    subject = Subject(api_key.id, client["id"], str(client["lookup"]), api_key.allowance)
    setattr(request, SUBJECT_ATTRIBUTE, subject)
    counter.add(subject, requests=1)


def subject_of(request: HttpRequest | Request) -> Subject | None:
    """The request's key and client; None unless one of our keys authenticated it."""
    subject: Subject | None = getattr(request, SUBJECT_ATTRIBUTE, None)
    return subject


def record_tokens(
    request: HttpRequest | Request,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    model: str | None = None,
    cached_prompt_tokens: int = 0,
) -> None:
    """Count a completion's tokens for the request's key, and their cost at ``model``'s
    price (``drf_llm_keys.prices``; ``cached_prompt_tokens``, part of ``prompt_tokens``, at
    the cached-input price); also after the view has returned (at the end of a streamed
    response). Without a model, or for a model without a price, the tokens are counted as
    unpriced. Requests not authenticated by one of our keys (a public client's) are not
    counted."""
    if prompt_tokens < 0 or completion_tokens < 0 or not 0 <= cached_prompt_tokens <= prompt_tokens:
        raise ValueError("Token counts cannot be negative, nor cached prompt tokens more than the prompt's.")
    subject = subject_of(request)
    if subject is None:
        return
    price = None if model is None else prices.price_of(model)
    tokens = prompt_tokens + completion_tokens
    if price is None:
        cost, unpriced = ZERO, tokens
    else:
        cost, unpriced = prices.cost_of(price, prompt_tokens, completion_tokens, cached_prompt_tokens), 0
    admission = getattr(request, ADMISSION_ATTRIBUTE, None)
    if admission is not None:  # limits.admit(): settled with this cost when the response ends
        admission.spend(None if price is None else cost)
    counter.add(
        subject,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        unpriced_tokens=unpriced,
    )
    budget = token_budget(subject)
    if budget is not None and tokens:
        seconds = budget[1]
        windows.add(token_counter_name(subject, seconds, windows.current(seconds)), tokens, seconds)


class MeteredStream(Generic[ChunkT]):
    """A streamed body that records its tokens once, when it ends, whatever ends it: its
    last chunk taken, an exception in the producer, or the server's ``close()`` when the
    client disconnects (what WSGI servers call, through Django's response, on a failed
    write), also before its first chunk.

    ``chunks`` gives ``(chunk, completion_tokens)`` pairs; the stream yields the chunks.
    A chunk's tokens count once the server asks for the next one (it has written this
    one) or the stream is over, so a client that leaves mid-stream is charged for what
    was sent. ``prompt_tokens`` may be set while streaming, by a producer that learns the
    figure late (an upstream reports it at the end)::

        return StreamingHttpResponse(MeteredStream(request, pairs, prompt_tokens=12))
    """

    def __init__(
        self,
        request: HttpRequest | Request,
        chunks: Iterable[tuple[ChunkT, int]],
        *,
        prompt_tokens: int = 0,
        model: str | None = None,
    ) -> None:
        self.request = request
        self.model = model  # priced as record_tokens prices it
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0  # of the chunks sent
        self._chunks = iter(chunks)
        self._handed = 0  # the tokens of the chunk the server holds now
        self._closed = False

    def __iter__(self) -> MeteredStream[ChunkT]:
        return self

    def __next__(self) -> ChunkT:
        self.completion_tokens += self._handed
        self._handed = 0
        if self._closed:
            raise StopIteration
        try:
            chunk, tokens = next(self._chunks)
        except BaseException:  # the end, or the producer's error: recorded before it goes on
            self.close()
            raise
        self._handed = tokens
        return chunk

    def close(self) -> None:
        """Stop the producer and record the tokens (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            record_tokens(
                self.request,
                prompt_tokens=max(0, self.prompt_tokens),
                completion_tokens=max(0, self.completion_tokens),
                model=self.model,
            )


class AsyncMeteredStream(MeteredStream[ChunkT]):
    """``MeteredStream`` for async views (ASGI): ``chunks`` is an async iterable of
    ``(chunk, completion_tokens)`` pairs, and the stream is one too. The tokens are recorded
    as ``MeteredStream`` records them, in a thread (recording may reach the cache): when the
    producer ends or fails, or when Django closes the response (the client gone)::

        return StreamingHttpResponse(AsyncMeteredStream(request, pairs(), model="gpt-4o"))
    """

    # Async only: Django streams what iter() accepts as a sync iterator.
    __iter__ = None  # type: ignore[assignment]

    def __init__(
        self,
        request: HttpRequest | Request,
        chunks: AsyncIterable[tuple[ChunkT, int]],
        *,
        prompt_tokens: int = 0,
        model: str | None = None,
    ) -> None:
        super().__init__(request, (), prompt_tokens=prompt_tokens, model=model)
        self._async_chunks = aiter(chunks)

    def __aiter__(self) -> AsyncMeteredStream[ChunkT]:
        return self

    async def __anext__(self) -> ChunkT:
        self.completion_tokens += self._handed
        self._handed = 0
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk, tokens = await anext(self._async_chunks)
        except BaseException:
            await sync_to_async(self.close)()
            raise
        self._handed = tokens
        return chunk


def token_budget(subject: Subject) -> tuple[int, int] | None:
    """``(tokens, seconds)`` for the subject's key on its client; None for no budget."""
    rates = conf.TOKEN_RATES
    return windows.parse_rate(rates[subject.client] if subject.client in rates else conf.TOKEN_RATE)


def token_counter_name(subject: Subject, seconds: int, window: int) -> str:
    # Not the request throttle's counter of the same key, client and window length.
    return windows.throttle_name(subject.client, f"tokens:{subject.allowance}", seconds, window)


def day_of(number: int) -> datetime.date:
    """The date of a UTC day counted from 1970-01-01 (what the counter files counts under)."""
    return EPOCH + datetime.timedelta(days=number)


def today() -> datetime.date:
    """The current UTC day, which the counts of this moment go to."""
    return day_of(int(time.time() // SECONDS_PER_DAY))


class UsageCounter:
    """The counts waiting in this process, and the timer that writes them."""

    def __init__(self) -> None:
        self._start_empty()

    def _start_empty(self) -> None:
        # New locks too: after a fork, another thread of the parent may have held the old ones.
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[CounterKey, Figures] = {}
        # Key pk -> when it was last used (time.time()), for last_used_at. Each key here has
        # a counter above: bounded by USAGE_MAX_PENDING too.
        self._last_used: dict[Any, float] = {}
        self._dropped = 0
        # A write that failed, whose commit may still have happened: tried again as it is.
        self._unsettled: Batch | None = None
        self._timer: threading.Timer | None = None
        self._due = 0.0  # when the timer fires (time.monotonic())
        self._failing = False  # the last write failed: wait for the interval, never sooner

    def add(
        self,
        subject: Subject,
        requests: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: Decimal = ZERO,
        unpriced_tokens: int = 0,
    ) -> None:
        now = time.time()
        name = (subject.key_id, subject.client_id, int(now // SECONDS_PER_DAY))  # the UTC day
        with self._lock:
            counts = self._counts_of(name)
            if counts is None:
                return
            if requests:
                self._last_used[subject.key_id] = now
            counts[0] += requests
            counts[1] += prompt_tokens
            counts[2] += completion_tokens
            counts[3] += cost
            counts[4] += unpriced_tokens
            # Half full: write now, while there is still room for what comes meanwhile.
            early = 2 * len(self._pending) >= conf.USAGE_MAX_PENDING and not self._failing
            if self._timer is None or (early and self._due > time.monotonic()):
                if self._timer is not None:
                    self._timer.cancel()
                self._schedule(0.0 if early else conf.USAGE_FLUSH_INTERVAL)

    def pending(self) -> dict[CounterKey, tuple[Any, ...]]:
        """The counts not known to be written: waiting, or of a write whose outcome is unknown."""
        with self._lock:
            summed = {name: list(c) for name, c in self._pending.items()}
            for name, figures in self._unsettled.counts.items() if self._unsettled else ():
                summed[name] = [
                    a + b for a, b in zip(summed.get(name, [0, 0, 0, ZERO, 0]), figures, strict=True)
                ]
            return {name: tuple(c) for name, c in summed.items()}

    def flush(self) -> bool:
        """Write the waiting counts now. False when they could not be written: they are kept
        (and logged) for the next flush."""
        with self._flush_lock:  # one flush at a time: the exit's waits for the timer's
            with self._lock:
                taken, self._pending = self._pending, {}
                used, self._last_used = self._last_used, {}
                dropped, self._dropped = self._dropped, 0
                unsettled = self._unsettled
            if dropped:
                logger.warning(
                    "drf_llm_keys: %d usage counts dropped: more than USAGE_MAX_PENDING=%d "
                    "(key, client, day) counters were waiting to be written",
                    dropped,
                    conf.USAGE_MAX_PENDING,
                )
            if unsettled is not None:
                try:
                    write_counts(unsettled.counts, unsettled.last_used, flush_id=unsettled.id)
                except Exception:
                    logger.warning(
                        "drf_llm_keys: could not write usage counts, kept for the next flush", exc_info=True
                    )
                    self._keep(taken, used)  # never tried: the next write's
                    return False
                with self._lock:
                    self._unsettled = None
            if not taken:
                self._failing = False
                return True
            batch = Batch(uuid.uuid4(), taken, used)
            try:
                write_counts(batch.counts, batch.last_used, flush_id=batch.id)
            except Exception:
                logger.warning(
                    "drf_llm_keys: could not write usage counts, kept for the next flush", exc_info=True
                )
                with self._lock:
                    self._unsettled = batch
                self._keep({}, {})
                return False
            self._failing = False
            return True

    def reset(self) -> None:
        """Forget every waiting count and stop the timer (for tests)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._pending.clear()
            self._last_used.clear()
            self._dropped = 0
            self._unsettled = None
            self._timer = None
            self._failing = False

    def forget_after_fork(self) -> None:
        # The parent writes its own counts: the child's copy would count them twice.
        self._start_empty()

    def flush_at_exit(self) -> None:
        try:
            if (self._pending or self._unsettled) and not self.flush():
                logger.warning("drf_llm_keys: usage counts not written at exit are lost")
        except Exception:  # at shutdown, even a retry timer may fail to start
            logger.warning("drf_llm_keys: usage counts not written at exit are lost", exc_info=True)

    def _keep(self, taken: dict[CounterKey, Figures], used: dict[Any, float]) -> None:
        with self._lock:
            self._failing = True
            for name, figures in taken.items():
                counts = self._counts_of(name)
                if counts is None:
                    continue
                for index, figure in enumerate(figures):
                    counts[index] += figure
                key_id = name[0]
                if key_id in used:
                    self._last_used[key_id] = max(used[key_id], self._last_used.get(key_id, 0.0))
            if (self._pending or self._unsettled) and self._timer is None:
                self._schedule(conf.USAGE_FLUSH_INTERVAL)

    def _counts_of(self, name: CounterKey) -> Figures | None:
        """The counts waiting under ``name`` (made if there is room; the lock is held)."""
        counts = self._pending.get(name)
        if counts is None:
            # The bound holds for the counts of a write whose outcome is unknown too; a name
            # that has counts there already takes no more room.
            unsettled = self._unsettled.counts if self._unsettled else {}
            if name not in unsettled and len(self._pending) + len(unsettled) >= conf.USAGE_MAX_PENDING:
                self._dropped += 1
                return None
            counts = self._pending[name] = [0, 0, 0, ZERO, 0]
        return counts

    def _schedule(self, delay: float) -> None:
        # Called with the lock held. A one-shot timer: an idle process runs no thread.
        self._timer = threading.Timer(delay, self._flush_in_background)
        self._due = time.monotonic() + delay
        self._timer.daemon = True
        self._timer.start()

    def _flush_in_background(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # reset, or forked, since this timer started
            self._timer = None
        try:
            self.flush()
        finally:
            connections.close_all()  # this thread's connections only: it ends here


def write_counts(
    counts: dict[CounterKey, Figures],
    last_used_at: Mapping[Any, float] | None = None,
    *,
    flush_id: uuid.UUID | None = None,
) -> None:
    """Add the counts to the stored figures and record when each key was last used
    (``last_used``), in one transaction; counts of keys or clients deleted since are
    dropped with them. With ``flush_id``, a write under an id that committed already
    adds nothing (see the module's docstring)."""
    using = router.db_for_write(KeyUsage)
    rows = [
        (key_id, client_id, day_of(day), *figures)
        for (key_id, client_id, day), figures in counts.items()
        if any(figures)
    ]
    checks, waits = 2, list(SQLITE_LOCKED_WAITS)
    while True:
        try:
            with transaction.atomic(using=using):
                if flush_id is not None and not _claimed(flush_id, using):
                    return  # an earlier try committed, its answer lost
                kept = _of_locked(rows, last_used_at or {}, using)
                for start in range(0, len(kept), BATCH_SIZE):
                    _add_rows(kept[start : start + BATCH_SIZE], using)
                if last_used_at:
                    write_last_used(last_used_at, using)
            return
        except IntegrityError:
            checks -= 1
            if not checks:
                raise
            # A key or client deleted between our check and our insert: check again.
        except OperationalError as exc:
            # SQLite fails at once, without its busy timeout, a transaction that has read
            # and then writes while another process writes (two workers flushing at
            # exit): once that one has committed, this one goes through.
            if not waits or connections[using].vendor != "sqlite" or "locked" not in str(exc):
                raise
            time.sleep(waits.pop(0))


def _claimed(flush_id: uuid.UUID, using: str) -> bool:
    """Insert the write's id; False when a try of it committed already. Inserted, not
    looked up: while a first try's commit is still under way, the insert waits for its
    outcome rather than miss it. Old ids are deleted here too."""
    now = timezone.now()
    flushes = UsageFlush._base_manager.using(using)
    try:
        with transaction.atomic(using=using):  # a savepoint: the error must not end the write's transaction
            flushes.create(id=flush_id, written_at=now)
    except IntegrityError:
        return False
    flushes.filter(written_at__lt=now - FLUSH_ID_RETENTION).delete()
    return True


def _of_locked(
    rows: Sequence[tuple[Any, ...]], last_used_at: Mapping[Any, float], using: str
) -> list[tuple[Any, ...]]:
    """The rows whose key and client still exist, with those locked first: the clients,
    then the keys, each in pk order, as ``keys`` locks them for a change. A delete locks
    its key or client before it removes their usage rows, so a writer that held a usage
    row while it waited for the key's row would deadlock with it; locked this way, one of
    them waits for the other before it holds anything the other needs."""
    client_ids = _locked_pks(get_client_model(), {row[1] for row in rows}, using)
    key_ids = _locked_pks(APIKey, {row[0] for row in rows} | set(last_used_at), using)
    return [row for row in rows if row[0] in key_ids and row[1] in client_ids]


def _locked_pks(model: Any, pks: Iterable[Any], using: str) -> set[Any]:
    """Those of ``pks`` whose rows exist, locked where the database locks rows (Django
    leaves FOR UPDATE out on SQLite). NO KEY UPDATE where there is one (PostgreSQL): inserts
    that refer to the row are not held up, only changes and deletes of it."""
    no_key = connections[using].features.has_select_for_no_key_update
    found: set[Any] = set()
    ordered = sorted(pks)
    for start in range(0, len(ordered), BATCH_SIZE):
        rows = model._base_manager.using(using).filter(pk__in=ordered[start : start + BATCH_SIZE])
        found.update(rows.select_for_update(no_key=no_key).order_by("pk").values_list("pk", flat=True))
    return found


def _add_rows(rows: Sequence[tuple[Any, ...]], using: str) -> None:
    if not rows:
        return
    connection = connections[using]
    if connection.vendor not in UPSERT_VENDORS:
        _add_rows_portably(rows, using)
        return
    by_name = {field.name: field for field in KeyUsage._meta.concrete_fields}
    fields = [by_name[name] for name in ("api_key", "llm_client", "day", *FIGURES)]
    params = [
        field.get_db_prep_save(value, connection)
        for row in rows
        for field, value in zip(fields, row, strict=True)
    ]
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(fields)) + ")"] * len(rows))
    quote = connection.ops.quote_name
    columns = [quote(str(field.column)) for field in fields]
    sql = (
        f"INSERT INTO {quote(KeyUsage._meta.db_table)} ({', '.join(columns)}) "
        f"VALUES {placeholders} {_on_conflict_add(connection, columns)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _on_conflict_add(connection: BaseDatabaseWrapper, columns: list[str]) -> str:
    """The clause that turns the INSERT of an existing (key, client, day) into an addition,
    atomic in the database: concurrent writers never lose each other's counts."""
    unique, figures = columns[:3], columns[3:]
    if connection.vendor == "mysql":
        # MySQL 8.0.19+ deprecates VALUES() here for a row alias, which MariaDB lacks.
        alias = not connection.mysql_is_mariadb and connection.mysql_version >= (8, 0, 19)  # type: ignore[attr-defined]
        new = "AS new " if alias else ""
        added = ", ".join(f"{c} = {c} + " + (f"new.{c}" if alias else f"VALUES({c})") for c in figures)
        return f"{new}ON DUPLICATE KEY UPDATE {added}"
    table = connection.ops.quote_name(KeyUsage._meta.db_table)
    added = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in figures)
    return f"ON CONFLICT ({', '.join(unique)}) DO UPDATE SET {added}"


def _add_rows_portably(rows: Sequence[tuple[Any, ...]], using: str) -> None:
    """An UPDATE that adds, else an INSERT; an INSERT that loses a race becomes the UPDATE."""
    for key_id, client_id, day, *figures in rows:
        same = KeyUsage._base_manager.using(using).filter(api_key_id=key_id, llm_client_id=client_id, day=day)
        added = {name: F(name) + figure for name, figure in zip(FIGURES, figures, strict=True)}
        if same.update(**added):
            continue
        try:
            with transaction.atomic(using=using):
                KeyUsage._base_manager.using(using).create(
                    api_key_id=key_id,
                    llm_client_id=client_id,
                    day=day,
                    **dict(zip(FIGURES, figures, strict=True)),
                )
        except IntegrityError:
            same.update(**added)


counter = UsageCounter()
flush = counter.flush
atexit.register(counter.flush_at_exit)
os.register_at_fork(after_in_child=counter.forget_after_fork)
