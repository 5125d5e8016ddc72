"""Spend budgets: which ones a key is under, the period each is spent over, and what the
database says was spent in it.

A key's own budget (``APIKey.budget_limit`` and ``budget_period``) is spent by the key and
every key that replaces it through rotations (``APIKey.allowance``); an owner's budget
(``OwnerBudget``) by all the owner's keys. A key that authenticated a request carries both
from its decision entry, so ``budgets_of`` costs no I/O on the request path.

Periods are UTC: a day, an ISO week from Monday, a calendar month, or the key's whole life
("total"). Spend is the ``cost`` of ``KeyUsage`` rows, which are per UTC day: a period's
rows are those of the days from its first on.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import NamedTuple

from django.db.models import Q, Sum
from django.utils import timezone

from . import usage
from .models import APIKey, KeyUsage, decision_db

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
KEY, OWNER = "key", "owner"


class Budget(NamedTuple):
    """A budget a key spends: its own (``scope`` "key", ``ident`` its allowance) or its
    owner's (``scope`` "owner", ``ident`` the owner's pk as text)."""

    scope: str
    ident: str
    limit: Decimal
    period: str


class Standing(NamedTuple):
    """Where a budget stands in its current period."""

    budget: Budget
    start: datetime.datetime
    end: datetime.datetime | None  # None: a "total" budget, which never resets
    spent: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.budget.limit - self.spent)


def budgets_of(api_key: APIKey) -> list[Budget]:
    """The key's budgets, its own first; none for a key without any."""
    budgets = []
    if api_key.budget_limit is not None and api_key.budget_period:
        budgets.append(Budget(KEY, api_key.allowance, api_key.budget_limit, api_key.budget_period))
    owner_budget = api_key.owner_budget
    if owner_budget is not None:
        budgets.append(Budget(OWNER, str(api_key.user_id), *owner_budget))
    return budgets


def period_bounds(period: str, now: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime | None]:
    """The UTC period that holds ``now`` (naive: read as UTC), as ``(start, end)``; a
    "total" period starts at the epoch and never ends (``end`` None)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    midnight = datetime.datetime.combine(now.date(), datetime.time(), tzinfo=UTC)
    if period == "day":
        return midnight, midnight + datetime.timedelta(days=1)
    if period == "week":
        monday = midnight - datetime.timedelta(days=midnight.weekday())
        return monday, monday + datetime.timedelta(weeks=1)
    if period == "month":
        first = midnight.replace(day=1)
        following = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
        return first, following
    if period == "total":
        return EPOCH, None
    raise ValueError(f"Unknown budget period {period!r}.")


def spent_in_db(budget: Budget, start: datetime.datetime) -> Decimal:
    """What the budget's keys have spent since ``start`` (from its UTC day on): the cost
    written to the database plus this process's counts not written yet. Other processes'
    unwritten counts (at most ``USAGE_FLUSH_INTERVAL`` old) are not in it."""
    using = decision_db()
    day = start.astimezone(UTC).date() if start.tzinfo is not None else start.date()
    key_ids = set(APIKey._base_manager.using(using).filter(_keys_of(budget)).values_list("pk", flat=True))
    written = KeyUsage._base_manager.using(using).filter(api_key__in=key_ids, day__gte=day)
    spent: Decimal = written.aggregate(cost=Sum("cost", default=Decimal(0)))["cost"]
    first = (day - usage.EPOCH).days
    for (key_id, _client_id, counted_day), figures in usage.counter.pending().items():
        if key_id in key_ids and counted_day >= first:
            spent += figures[usage.FIGURES.index("cost")]
    return spent


def standing(budget: Budget, now: datetime.datetime | None = None) -> Standing:
    """The budget's current period and what was spent in it (``spent_in_db``)."""
    start, end = period_bounds(budget.period, now or timezone.now())
    return Standing(budget, start, end, spent_in_db(budget, start))


def _keys_of(budget: Budget) -> Q:
    if budget.scope == KEY:
        # The first key of a lineage has none of its own: its prefix is the allowance.
        return Q(prefix=budget.ident) | Q(lineage=budget.ident)
    if budget.scope == OWNER:
        return Q(user_id=budget.ident)  # the pk field reads its text
    raise ValueError(f"Unknown budget scope {budget.scope!r}.")
