"""Budgets and requests in flight, enforced before the upstream call.

A view that calls an LLM admits the request first, with its worst case::

    limits.admit(request, model="gpt-4o", prompt_tokens=812, max_tokens=1024)

That one call (one Lua script on Redis) takes a slot of the key's ``max_concurrent`` (or
``MAX_CONCURRENT``) and reserves, on the key's budget and its owner's, what the request can
cost at most: its prompt and ``max_tokens`` at the model's price. It raises the 429 of the
limit that has no room (``BudgetExceeded``, ``TooManyInFlight``). ``usage.record_tokens``
(and ``MeteredStream``) notes what the request really cost; ``LimitsMiddleware`` settles
once, when the response has ended, however it ends: the slot and the reservation go, the
real cost is added to the budgets' spend (on Redis without waiting for the reply: see
``ledger.RedisLedger``). A worker killed before that frees them when their lease
(``RESERVATION_LEASE``) runs out.

A key without a budget or a cap pays nothing here: no call at all.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions

from . import budgets, headers, ledger, prices, signals
from .access import CLIENT_ATTRIBUTE
from .conf import conf
from .decisions.names import client_id, key_name
from .models import APIKey, per_period
from .usage import ADMISSION_ATTRIBUTE

logger = logging.getLogger("drf_llm_keys")

# On Django's request: the mark LimitsMiddleware leaves.
MIDDLEWARE_ATTRIBUTE = "drf_llm_keys_limits_middleware"

# Seconds a client refused for requests in flight is told to wait: a slot frees when any
# of the key's requests ends, which nothing here can foretell.
IN_FLIGHT_RETRY_AFTER = 1


class BudgetExceeded(exceptions.APIException):
    """A budget has no room for the request's worst case: nothing to retry until its
    period ends (``x-should-retry: false`` tells the ``openai`` and ``anthropic`` clients)."""

    status_code = 429
    default_detail = _("This key's budget is spent for the current period.")
    default_code = "insufficient_quota"


class TooManyInFlight(exceptions.Throttled):
    """The key has ``max_concurrent`` requests in flight already."""

    default_detail = _("Too many requests in flight for this key.")
    default_code = "too_many_requests_in_flight"


class LimitsUnavailable(exceptions.APIException):
    """Budgets and caps could not be checked (the cache is down) and fail closed."""

    status_code = 503
    default_detail = _("Usage limits cannot be checked right now. Try again later.")
    default_code = "service_unavailable"


class Admission:
    """A request's slot and reservations, settled once at the end of its response."""

    def __init__(
        self,
        reservation: ledger.Reservation | None,
        budget_accounts: Sequence[ledger.Account],
        worst_case: Decimal,
        labels: dict[str, budgets.Budget],
    ) -> None:
        self.reservation = reservation  # None: admitted without one (LIMITS_FAIL_OPEN)
        self.budget_accounts = list(budget_accounts)
        self.worst_case = worst_case
        self.labels = labels  # budget account name -> its budget, for the threshold signal
        self.cost = Decimal(0)  # what record_tokens noted
        self._lock = threading.Lock()

    def spend(self, cost: Decimal | None) -> None:
        """Note a completion's cost; None for a model without a price, which counts as the
        worst case reserved (never as free)."""
        with self._lock:
            self.cost += self.worst_case if cost is None else cost

    def settle(self) -> None:
        """Free the slot and the reservations, and add the noted cost to the budgets."""
        if self.reservation is None:
            return
        units = ledger.to_units(self.cost)
        try:
            raised = self.reservation.settle({account.name: units for account in self.budget_accounts})
        except ledger.Unavailable:
            logger.warning(
                "drf_llm_keys: a reservation could not be settled; its lease frees it", exc_info=True
            )
            return
        for name, total in raised.items():
            budget = self.labels[name]
            signals.budget_threshold_reached.send(
                sender=budgets.Budget, budget=budget, spent=ledger.from_units(total), limit=budget.limit
            )


def admit(
    request: Any, *, model: str | None = None, prompt_tokens: int = 0, max_tokens: int = 0
) -> Admission | None:
    """Admit the request under its key's budgets and in-flight cap, before the upstream call.

    ``prompt_tokens`` and ``max_tokens`` bound what the completion can cost at ``model``'s
    price; a key with a budget may only use a priced model (403 otherwise). Returns None for
    a request without one of our keys (a public client's) or a key with no limit here.
    """
    if prompt_tokens < 0 or max_tokens < 0:
        raise ValueError("Token counts cannot be negative.")
    target = getattr(request, "_request", request)
    if not getattr(target, MIDDLEWARE_ATTRIBUTE, False):
        raise ImproperlyConfigured(
            "drf_llm_keys.limits.admit() needs drf_llm_keys.middleware.LimitsMiddleware in MIDDLEWARE: "
            "it settles what admit() reserves when the response ends."
        )
    if getattr(target, ADMISSION_ATTRIBUTE, None) is not None:
        raise ValueError("admit() was called twice for this request.")
    api_key = getattr(request, "auth", None)
    client = getattr(request, CLIENT_ATTRIBUTE, None)
    if not isinstance(api_key, APIKey) or client is None:
        return None
    holds: list[tuple[ledger.Account, int]] = []
    cap = in_flight_cap(api_key, str(client["lookup"]))
    if cap is not None:
        holds.append((in_flight_account(api_key, str(client["lookup"]), cap), 1))
    now = timezone.now()
    found = budgets.budgets_of(api_key)
    worst = Decimal(0)
    if found:
        price = None if model is None else prices.price_of(model)
        if price is None:
            raise exceptions.PermissionDenied(
                _("This key has a budget: it may only use a model with a price."), code="model_not_priced"
            )
        worst = prices.cost_of(price, prompt_tokens, max_tokens)
    labels = {}
    budget_accounts = []
    for budget in found:
        account = budget_account(budget, now)
        labels[account.name] = budget
        budget_accounts.append(account)
        # At least one unit: a spent budget refuses a request that claims to cost nothing.
        holds.append((account, max(1, ledger.to_units(worst, up=True))))
    if not holds:
        return None
    try:
        reservation = ledger.get_ledger().reserve(holds, conf.RESERVATION_LEASE)
    except ledger.Refused as refused:
        raise _refusal(target, refused, labels) from None
    except ledger.Unavailable:
        if not conf.LIMITS_FAIL_OPEN:
            logger.warning(
                "drf_llm_keys: limits unavailable, request refused (LIMITS_FAIL_OPEN is off)", exc_info=True
            )
            raise LimitsUnavailable() from None
        logger.warning("drf_llm_keys: limits unavailable, request admitted (LIMITS_FAIL_OPEN)", exc_info=True)
        reservation = None
    admission = Admission(reservation, budget_accounts, worst, labels)
    setattr(target, ADMISSION_ATTRIBUTE, admission)
    return admission


async def aadmit(
    request: Any, *, model: str | None = None, prompt_tokens: int = 0, max_tokens: int = 0
) -> Admission | None:
    """``admit`` for async views: in a thread, as it may read the database (a budget's
    spend, when the cache has lost it) and waits for Redis."""
    return await sync_to_async(admit)(
        request, model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens
    )


def in_flight_cap(api_key: APIKey, client: str) -> int | None:
    """The key's own ``max_concurrent``, else ``MAX_CONCURRENT_RATES`` for the client, else
    ``MAX_CONCURRENT``; None for no cap."""
    own = getattr(api_key, "max_concurrent", None)
    if own is not None:
        return int(own)
    caps = conf.MAX_CONCURRENT_RATES
    cap = caps[client] if client in caps else conf.MAX_CONCURRENT
    return None if cap is None else int(cap)


def in_flight_account(api_key: APIKey, client: str, cap: int) -> ledger.Account:
    """The key's requests in flight to one client, with the keys that replace it."""
    return ledger.Account(key_name("c", f"{client_id(client)}.{_hashed(api_key.allowance)}"), cap)


def budget_account(budget: budgets.Budget, now: datetime) -> ledger.Account:
    """The budget's spend in the period running at ``now``."""
    start, end = budgets.period_bounds(budget.period, now)
    name = key_name("b", f"{budget.scope}.{_hashed(budget.ident)}.{budget.period}.{int(start.timestamp())}")

    def seed() -> int:
        return ledger.to_units(budgets.spent_in_db(budget, start))

    limit = ledger.to_units(budget.limit)
    # The alert's spend: at least one unit, so a threshold of 0 means the first spend.
    alert_at = max(1, math.ceil(limit * conf.BUDGET_ALERT_THRESHOLD))
    return ledger.Account(name, limit, None if end is None else end.timestamp(), seed, alert_at)


def standing(budget: budgets.Budget, now: datetime | None = None) -> tuple[Decimal, Decimal]:
    """``(spent, reserved)`` of the budget's current period as ``admit`` counts them: the
    shared counter (else the written usage, as ``admit`` would seed it) and what requests
    in flight hold; reserved 0 when the cache cannot be reached."""
    now = now or timezone.now()
    account = budget_account(budget, now)
    try:
        ((spent, reserved),) = ledger.get_ledger().standing([account])
    except ledger.Unavailable:
        spent, reserved = None, 0
    start = budgets.period_bounds(budget.period, now)[0]
    written = budgets.spent_in_db(budget, start) if spent is None else ledger.from_units(spent)
    return written, ledger.from_units(reserved)


def settle(request: Any) -> None:
    """Settle the request's admission, if it has one (``LimitsMiddleware``, at the end)."""
    admission: Admission | None = getattr(request, ADMISSION_ATTRIBUTE, None)
    if admission is not None:
        admission.settle()


def _refusal(
    target: Any, refused: ledger.Refused, labels: dict[str, budgets.Budget]
) -> exceptions.APIException:
    budget = labels.get(refused.account.name)
    if budget is None:
        headers.note_refusal(target, time.time() + IN_FLIGHT_RETRY_AFTER)
        return TooManyInFlight(
            IN_FLIGHT_RETRY_AFTER,
            detail=f"Too many requests in flight for this key: at most {refused.account.limit} at once.",
        )
    headers.note_headers(target, x_should_retry="false")
    left = max(Decimal(0), ledger.from_units(refused.account.limit - refused.used))
    amount, currency = prices.amount_text(budget.limit), conf.CURRENCY
    whose = "This key's" if budget.scope == budgets.KEY else "The key owner's"
    return BudgetExceeded(
        f"{whose} budget of {amount} {currency} {per_period(budget.period)} has "
        f"{prices.amount_text(left)} {currency} left, less than this request can cost."
    )


def _hashed(ident: str) -> str:
    return hashlib.sha256(ident.encode()).hexdigest()[:32]
