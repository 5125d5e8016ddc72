"""A view a key calls to learn about itself: its client, restrictions, expiry, usage today,
cost, and where it stands against its rates and budgets (like OpenRouter's
``GET /api/v1/key``).

Mount it under a client's URL, as any view of that client::

    path("clients/<str:llm_client>/key/", KeyInfoView.as_view())

Only a key of that client may call it (401 otherwise, a public client's too). It costs
one SQL query (today's written usage), one cache read per rate that applies, and two
queries per budget (``budgets.spent_in_db``).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import budgets, limits, prices, usage, windows
from .authentication import CLIENT_ATTRIBUTE, LLMClientAPIKeyAuthentication
from .conf import conf
from .headers import reset_text
from .models import BUDGET_PERIODS, APIKey, KeyUsage
from .throttling import APIKeyRateThrottle, key_counter_name


class HasAPIKey(BasePermission):
    """The request was authenticated by one of our keys (a public client's is not)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(request.auth, APIKey):
            raise NotAuthenticated("Call this with an API key of the client.")
        return True


class LimitSerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField(help_text="The amount per window.")
    remaining = serializers.IntegerField(help_text="What is left in the current window.")
    reset = serializers.CharField(help_text='Time until the window ends, as OpenAI writes it ("6m0s").')


class UsageTodaySerializer(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.CharField(help_text="A decimal string, in `currency`.")
    unpriced_tokens = serializers.IntegerField(help_text="Tokens of models without a price: not in `cost`.")


class BudgetSerializer(serializers.Serializer[Any]):
    limit = serializers.CharField(help_text="A decimal string, in `currency`, per period.")
    period = serializers.ChoiceField(choices=BUDGET_PERIODS, help_text="UTC; a week starts on Monday.")
    spent = serializers.CharField(help_text="Settled in the current period, as the limits count it.")
    reserved = serializers.CharField(help_text="Held by requests in flight: their worst case.")
    remaining = serializers.CharField(help_text="What a new request may still reserve, 0 at least.")
    resets_at = serializers.DateTimeField(
        allow_null=True, help_text="When the period ends; null: never (total)."
    )


class KeyInfoSerializer(serializers.Serializer[Any]):
    prefix = serializers.CharField()
    name = serializers.CharField()
    llm_client = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField(), help_text="Empty: unrestricted.")
    allowed_models = serializers.ListField(child=serializers.CharField(), help_text="Empty: any model.")
    expires_at = serializers.DateTimeField(allow_null=True)
    currency = serializers.CharField()
    usage_today = UsageTodaySerializer(help_text="UTC day, as written: trails by up to the flush interval.")
    requests = LimitSerializer(allow_null=True, help_text="The request rate; null: none.")
    tokens = LimitSerializer(allow_null=True, help_text="The token rate; null: none.")
    budget = BudgetSerializer(allow_null=True, help_text="The key's own budget; null: none.")
    owner_budget = BudgetSerializer(
        allow_null=True, help_text="The budget shared by all the owner's keys; null: none."
    )
    max_concurrent = serializers.IntegerField(
        allow_null=True,
        help_text="Requests in flight at once with this key on this client (its own cap, else "
        "the settings'); null: none.",
    )


class KeyInfoView(APIView):
    """``GET``: the calling key, as ``KeyInfoSerializer`` describes it."""

    authentication_classes = [LLMClientAPIKeyAuthentication]
    permission_classes = [HasAPIKey]
    serializer_class = KeyInfoSerializer

    def get(self, request: Request, **kwargs: Any) -> Response:
        api_key = request.auth
        assert isinstance(api_key, APIKey)  # HasAPIKey
        subject = usage.subject_of(request)
        client = getattr(request, CLIENT_ATTRIBUTE)
        assert subject is not None  # set by the authentication with request.auth
        written = KeyUsage.objects.filter(api_key=api_key, llm_client_id=subject.client_id, day=usage.today())
        figures = written.aggregate(**{name: Sum(name, default=0) for name in usage.FIGURES})
        figures["cost"] = f"{figures['cost'].normalize():f}" if figures["cost"] else "0"
        info = {
            "prefix": api_key.prefix,
            "name": api_key.name,
            "llm_client": str(client["lookup"]),
            "scopes": list(api_key.scopes or []),
            "allowed_models": list(api_key.allowed_models or []),
            "expires_at": api_key.expires_at,
            "currency": conf.CURRENCY,
            "usage_today": figures,
            "requests": self.request_limit(api_key, subject),
            "tokens": self.token_limit(subject),
            "budget": None,
            "owner_budget": None,
            "max_concurrent": limits.in_flight_cap(api_key, subject.client),
        }
        for budget in budgets.budgets_of(api_key):
            info["budget" if budget.scope == budgets.KEY else "owner_budget"] = _budget(budget)
        return Response(KeyInfoSerializer(info).data)

    def request_limit(self, api_key: APIKey, subject: usage.Subject) -> dict[str, Any] | None:
        rate = windows.parse_rate(APIKeyRateThrottle().get_rate(subject.client, keyed=True))
        if rate is None:
            return None
        name = key_counter_name(subject.client, api_key, rate[1], windows.current(rate[1]))
        return _limit(rate, windows.read(name))

    def token_limit(self, subject: usage.Subject) -> dict[str, Any] | None:
        rate = usage.token_budget(subject)
        if rate is None:
            return None
        return _limit(
            rate, windows.read(usage.token_counter_name(subject, rate[1], windows.current(rate[1])))
        )


def _budget(budget: budgets.Budget) -> dict[str, Any]:
    now = timezone.now()
    spent, reserved = limits.standing(budget, now)
    return {
        "limit": prices.amount_text(budget.limit),
        "period": budget.period,
        "spent": prices.amount_text(spent),
        "reserved": prices.amount_text(reserved),
        "remaining": prices.amount_text(max(Decimal(0), budget.limit - spent - reserved)),
        "resets_at": budgets.period_bounds(budget.period, now)[1],
    }


def _limit(rate: tuple[int, int], spent: int | None) -> dict[str, Any]:
    amount, seconds = rate
    window = windows.current(seconds)
    return {
        "limit": amount,
        "remaining": max(0, amount - (spent or 0)),
        "reset": reset_text(windows.end_of(window, seconds) - time.time()),
    }
