"""``manage.py llm_keys``: create, list, update, rotate and revoke API keys, and invalidate
clients' cached decisions (see docs/key-management.md).

A plaintext key is written to stdout alone, once, so ``KEY=$(manage.py llm_keys create ...)``
captures just the key; what was done and the warning go to stderr. ``--json`` writes one
JSON document to stdout instead.

Every read runs where keys are written (``decision_db``): an operator sees the previous
command's work at once, and the last-key guard counts keys on the primary, never on a
read replica that may lag behind a revocation.

A change whose invalidation has not reached the cache within ``PUBLISH_TIMEOUT`` is never
reported as done: its output (a new key included) is written, then the command fails. An
action that changes something first publishes what earlier changes left unpublished (the
outbox), and ``revoke`` of a key revoked already publishes its clients' invalidation again:
running a command again completes a change whose process died before publishing it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, IntegrityError, models, router, transaction
from django.utils import timezone

from drf_llm_keys import budgets, crypto, decisions, get_client_model, keys, prices, usage
from drf_llm_keys.conf import conf
from drf_llm_keys.decisions import invalidation
from drf_llm_keys.models import BUDGET_PERIODS, APIKey, KeyUsage, OwnerBudget, decision_db, per_period

ONCE_WARNING = "Store this key now: it cannot be shown again."
USAGE_FIGURES = ("requests", "prompt_tokens", "completion_tokens", "cost", "unpriced_tokens")
MAX_USAGE_DAYS = 36600

# The actions that change keys or clients: each publishes what the outbox holds first.
CHANGES = frozenset({"create", "rotate", "update", "revoke", "budget", "client_create"})

ParsedT = TypeVar("ParsedT")
ResultT = TypeVar("ResultT")


RESTRICTION_HELP = {
    "scope": "Give the key this scope, for views' required_scopes; repeat for more.",
    "model": 'Restrict the key to this model; repeat to allow more ("gpt-4o*": every name that starts so).',
}
MAX_CONCURRENT_HELP = "At most N requests with the key in flight at once, across all server processes."


class Command(BaseCommand):
    help = (
        "Create, list, update, rotate and revoke the API keys of LLM clients, report their usage; "
        "create and list the clients; invalidate their cached decisions. "
        "See 'llm_keys ACTION --help' for each action."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        create = actions.add_parser("create", help="Create a key mapped to a client; prints it once.")
        create.add_argument("client", metavar="CLIENT", help="The client's lookup value (its slug).")
        create.add_argument("--user", required=True, metavar="USERNAME", help="The key's owner.")
        create.add_argument("--name", required=True, help="A name for the key.")
        create.add_argument("--description", default="", metavar="TEXT", help="Notes on the key (optional).")
        self._add_expiry(create, "The key expires")
        self._add_restrictions(create)
        create.add_argument(
            "--max-concurrent", type=int, metavar="N", help=MAX_CONCURRENT_HELP + " None: no cap."
        )
        create.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        listing = actions.add_parser(
            "list", help="List keys that are not revoked, expired ones marked; never a plaintext or a digest."
        )
        listing.add_argument("client", metavar="CLIENT", nargs="?", help="Only this client's keys.")
        listing.add_argument("--all", action="store_true", help="Include revoked keys too.")
        listing.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        rotate = actions.add_parser(
            "rotate", help="Replace a key; the old one keeps working for a grace period."
        )
        rotate.add_argument(
            "target",
            metavar="CLIENT|PREFIX",
            help="A key's prefix, or a client with exactly one working key.",
        )
        rotate.add_argument(
            "--grace",
            default="24h",
            metavar="DURATION",
            help="How long the old key keeps working (default 24h; 0 = stops at once).",
        )
        self._add_expiry(rotate, "The new key expires")
        rotate.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        self._add_update(actions)

        revoke = actions.add_parser("revoke", help="Revoke a key; it is refused at once everywhere.")
        revoke.add_argument(
            "prefix",
            metavar="PREFIX",
            help="The key's prefix: the part before the dot, e.g. llmk_3f9a2c1b7d4e.",
        )
        last_key = revoke.add_mutually_exclusive_group()
        last_key.add_argument(
            "--yes",
            action="store_true",
            help="Also revoke a client's last active key, which makes that client PUBLIC: anyone "
            "gets in, with any key or none.",
        )
        last_key.add_argument(
            "--keep-protected",
            action="store_true",
            help="Also revoke a client's last active key, and set require_api_key on that client "
            "so that it keeps refusing requests without a valid key.",
        )
        revoke.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        self.add_client_parsers(actions)
        self._add_usage(actions)
        self._add_budget(actions)
        self._add_invalidate(actions)

    def _add_invalidate(self, actions: Any) -> None:
        invalidate = actions.add_parser(
            "invalidate",
            help="Write new generations for clients, so every process reloads their decisions: "
            "after a change whose invalidation could not reach the cache.",
        )
        invalidate.add_argument(
            "clients", metavar="CLIENT", nargs="*", help="A client's lookup value (its slug)."
        )
        which = invalidate.add_mutually_exclusive_group()
        which.add_argument("--all", action="store_true", help="Every client, in batches.")
        which.add_argument(
            "--pending",
            action="store_true",
            help="The clients of committed changes whose invalidation is not known to have "
            "reached the cache (kept in the database).",
        )

    def _add_budget(self, actions: Any) -> None:
        budget = actions.add_parser(
            "budget",
            help="Show or set a key's spend budget, or an owner's (shared by all their keys), "
            "with what was spent this period.",
        )
        budget.add_argument("prefix", metavar="PREFIX", nargs="?", help="The key's prefix.")
        budget.add_argument(
            "--owner",
            metavar="USERNAME",
            help="This user's budget, shared by all their keys, instead of a key's.",
        )
        change = budget.add_mutually_exclusive_group()
        change.add_argument(
            "--limit",
            metavar="AMOUNT",
            help="What may be spent per period, in the prices' currency: 25, 12.50.",
        )
        change.add_argument("--clear", action="store_true", help="Remove the budget.")
        budget.add_argument(
            "--period",
            choices=BUDGET_PERIODS,
            help="With --limit: what it is spent over, in UTC (a week starts on Monday; total: "
            "never resets). Default: the budget's current period.",
        )
        budget.add_argument("--json", action="store_true", help="Write JSON to stdout.")

    def _add_usage(self, actions: Any) -> None:
        usage = actions.add_parser("usage", help="Requests and tokens per key, client and UTC day.")
        usage.add_argument(
            "target", metavar="CLIENT|PREFIX", nargs="?", help="Only this client's keys, or this key."
        )
        usage.add_argument("--days", default="30", metavar="N", help="The last N UTC days (default 30).")
        usage.add_argument("--json", action="store_true", help="Write JSON to stdout.")

    def _add_expiry(self, parser: CommandParser, what: str) -> None:
        accept_negative_values(parser)
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--expires-in", metavar="DURATION", help=f"{what} after this long: 45s, 30m, 12h, 90d or 2w."
        )
        group.add_argument(
            "--expires-at",
            metavar="ISO-8601",
            help=f"{what} at this date and time, e.g. 2027-01-31T12:00:00Z.",
        )

    def _add_restrictions(self, parser: CommandParser, clear: bool = False) -> None:
        for flag, dest, what in (("--scope", "scopes", "scope"), ("--model", "allowed_models", "model")):
            # update: a list and its --clear-... flag contradict each other.
            group = parser.add_mutually_exclusive_group() if clear else parser
            group.add_argument(
                flag,
                dest=dest,
                action="append",
                metavar=what.upper(),
                help=RESTRICTION_HELP[what]
                + (" Replaces the key's list." if clear else " None: unrestricted."),
            )
            if clear:
                group.add_argument(
                    f"--clear-{what}s",
                    action="store_true",
                    help=f"Empty the key's {what} list: no {what} restriction.",
                )

    def _add_update(self, actions: Any) -> None:
        update = actions.add_parser(
            "update",
            help="Replace a key's scopes, allowed models or cap on requests in flight; applied at "
            "once everywhere.",
        )
        update.add_argument("prefix", metavar="PREFIX")
        self._add_restrictions(update, clear=True)
        cap = update.add_mutually_exclusive_group()
        cap.add_argument("--max-concurrent", type=int, metavar="N", help=MAX_CONCURRENT_HELP)
        cap.add_argument(
            "--clear-max-concurrent", action="store_true", help="No cap on the key's requests in flight."
        )
        update.add_argument("--json", action="store_true", help="Write JSON to stdout.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "client":
            action = f"client_{options['client_action']}"
        handler = getattr(self, f"handle_{action}")
        refuse_nul_characters(options)
        self.unpublished: keys.InvalidationPending | None = None
        if action in CHANGES:
            self.publish_pending()
        try:
            handler(options)
        except keys.KeyLifecycleError as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:  # scopes or models
            raise CommandError(" ".join(exc.messages)) from exc
        if self.unpublished is not None:
            raise CommandError(str(self.unpublished))

    def publish_pending(self) -> None:
        """Publish what the outbox still holds before changing anything: a change whose
        process died between its commit and its publish lands now, whatever this command
        does. One indexed SELECT when it holds nothing."""
        with contextlib.suppress(invalidation.CacheUnreachable):
            # The rows stay in the outbox, for the next run or `invalidate --pending`.
            invalidation.republish_pending(decision_db())

    def committed(self, operation: Callable[..., ResultT], *args: Any, **kwargs: Any) -> ResultT:
        """Run a ``keys`` operation. One whose invalidation is still pending is done in the
        database all the same: its result is shown, then ``handle()`` fails with the reason."""
        try:
            return operation(*args, **kwargs)
        except keys.InvalidationPending as exc:
            self.unpublished = exc
            return cast("ResultT", exc.result)

    # --- subcommands --------------------------------------------------------------------

    def handle_create(self, options: dict[str, Any]) -> None:
        llm_client = self.get_client(options["client"])
        user = self.get_user(options["user"])
        api_key, plaintext = self.committed(
            keys.create_key,
            [llm_client],
            user=user,
            name=options["name"],
            description=options["description"],
            expires_at=self.get_expiry(options),
            scopes=options["scopes"] or (),
            allowed_models=options["allowed_models"] or (),
            max_concurrent=options["max_concurrent"],
        )
        self.say(f"Created key {api_key.prefix} ({api_key.name}) for {keys.lookup_value(llm_client)}.")
        self.show_plaintext(plaintext, {"key": plaintext, **self.record(api_key)}, options)

    def handle_list(self, options: dict[str, Any]) -> None:
        rows = (
            APIKey.objects.using(decision_db())
            .select_related("user")
            .prefetch_related("client_links__llm_client")
        )
        if options["client"] is not None:
            rows = rows.filter(client_links__llm_client=self.get_client(options["client"]))
        if not options["all"]:
            rows = rows.filter(is_active=True)
        records = [self.record(api_key) for api_key in rows.order_by("created_at", "pk")]
        if options["json"]:
            self.stdout.write(json.dumps(records, indent=2))
        else:
            self.write_table(records)

    def handle_rotate(self, options: dict[str, Any]) -> None:
        grace = self.parse(keys.parse_duration, options["grace"])
        expires_at = self.get_expiry(options)
        target = self.get_rotation_target(options["target"])
        if isinstance(target, APIKey):
            old = target
            new, plaintext = self.committed(keys.rotate_key, old, grace, expires_at=expires_at)
        else:
            old, new, plaintext = self.committed(keys.rotate_client_key, target, grace, expires_at=expires_at)
        old.refresh_from_db(using=decision_db())
        if keys.has_expired(old):
            until = "no longer works"
        else:
            until = f"keeps working until {self.when(old.expires_at)}"
        self.say(f"Rotated {old.prefix} -> {new.prefix} ({new.name}); {old.prefix} {until}.")
        self.show_plaintext(
            plaintext, {"key": plaintext, **self.record(new), "old_key": self.record(old)}, options
        )

    def handle_update(self, options: dict[str, Any]) -> None:
        changes = {
            field: [] if options[f"clear_{what}s"] else options[field]
            for field, what in (("scopes", "scope"), ("allowed_models", "model"))
            if options[f"clear_{what}s"] or options[field] is not None
        }
        cap = options["clear_max_concurrent"] or options["max_concurrent"] is not None
        if not changes and not cap:
            raise CommandError(
                "Nothing to update: give --scope, --model, --max-concurrent, --clear-scopes, "
                "--clear-models or --clear-max-concurrent."
            )
        api_key = self.get_key(options["prefix"])
        using = router.db_for_write(APIKey)
        # One transaction, so one change: its invalidation is waited for once, after it.
        with transaction.atomic(using=using):
            if changes:
                api_key = keys.update_restrictions(api_key, **changes)
            if cap:
                api_key = keys.set_max_concurrent(api_key, options["max_concurrent"])
        self.committed(keys.published, using, list(keys.clients_of(api_key).using(using)), api_key)
        if options["json"]:
            self.stdout.write(json.dumps(self.record(api_key), indent=2))
            return
        if self.unpublished is not None:
            return  # not "applied from the next request on": handle() says why
        self.stdout.write(
            f"Updated key {api_key.prefix} ({api_key.name}): scopes {self.listed(api_key.scopes, 'all')}; "
            f"models {self.listed(api_key.allowed_models, 'any')}; "
            f"max concurrent {api_key.max_concurrent or 'no cap'}. Applied from the next request on."
        )

    def handle_revoke(self, options: dict[str, Any]) -> None:
        api_key = self.get_key(options["prefix"])
        made_public: list[models.Model] = []
        kept_protected: list[models.Model] = []
        try:
            if options["keep_protected"]:
                kept_protected = self.committed(keys.revoke_key_keep_protected, api_key)
            else:
                made_public = self.committed(keys.revoke_key, api_key, allow_public=options["yes"])
        except keys.AlreadyRevoked as exc:
            note = str(exc)
        except keys.LastActiveKeyError as exc:
            raise CommandError(
                f"{exc} Pass --keep-protected to revoke it and keep the client protected "
                "(require_api_key), or --yes to revoke it and make the client public."
            ) from exc
        else:
            note = self.revoke_note(api_key, made_public, kept_protected)
        if options["json"]:
            api_key.refresh_from_db(using=decision_db())
            document = {
                **self.record(api_key),
                "made_public": [keys.lookup_value(c) for c in made_public],
                "kept_protected": [keys.lookup_value(c) for c in kept_protected],
            }
            self.stdout.write(json.dumps(document, indent=2))
            return
        if self.unpublished is not None:
            return  # not "refused from now on": handle() says why
        self.stdout.write(note, style_func=self.style.WARNING if made_public else None)

    def revoke_note(
        self, api_key: APIKey, made_public: list[models.Model], kept_protected: list[models.Model]
    ) -> str:
        revoked = f"Revoked key {api_key.prefix} ({api_key.name})"
        if made_public:
            # A public client serves every request anonymously: the revoked key gets in too.
            names = ", ".join(keys.lookup_value(c) for c in made_public)
            return (
                f"{revoked}. {names} now has no active key and is PUBLIC: anyone gets in, with "
                "this key, any other key or none. To protect it again, create a key for it or "
                "set require_api_key on it."
            )
        if kept_protected:
            names = ", ".join(keys.lookup_value(c) for c in kept_protected)
            return (
                f"{revoked}; it is refused from now on. {names} had no other active key and now "
                "has require_api_key set: it refuses every request until a new key is mapped to it."
            )
        return f"{revoked}; it is refused from now on."

    def handle_usage(self, options: dict[str, Any]) -> None:
        days = self.get_days(options["days"])
        since = usage.today() - timedelta(days=days - 1)
        rows = KeyUsage.objects.filter(day__gte=since).select_related("api_key", "llm_client")
        if options["target"] is not None:
            target = self.get_key_or_client(options["target"], "the two cannot be told apart")
            rows = (
                rows.filter(api_key=target) if isinstance(target, APIKey) else rows.filter(llm_client=target)
            )
        records = [
            {
                "day": row.day.isoformat(),
                "client": keys.lookup_value(row.llm_client),
                "prefix": row.api_key.prefix,
                "name": row.api_key.name,
                **{figure: getattr(row, figure) for figure in USAGE_FIGURES},
            }
            for row in rows.order_by("day", "api_key__prefix", "llm_client__pk")
        ]
        totals: dict[str, Any] = {figure: sum(r[figure] for r in records) for figure in USAGE_FIGURES}
        for figures in (*records, totals):  # exact decimal text, never a float
            figures["cost"] = prices.amount_text(Decimal(figures["cost"]))
        if options["json"]:
            document = {
                "since": since.isoformat(),
                "days": days,
                "currency": conf.CURRENCY,
                "usage": records,
                "totals": totals,
            }
            self.stdout.write(json.dumps(document, indent=2))
            return
        header = (
            "DAY",
            "CLIENT",
            "PREFIX",
            "NAME",
            "REQUESTS",
            "PROMPT TOKENS",
            "COMPLETION TOKENS",
            f"COST ({conf.CURRENCY})",
            "UNPRICED TOKENS",
        )
        total = ("total", "", "", "", *(str(totals[f]) for f in USAGE_FIGURES))
        table = [
            header,
            *[
                (
                    *(str(r[c]) for c in ("day", "client", "prefix", "name")),
                    *(str(r[f]) for f in USAGE_FIGURES),
                )
                for r in records
            ],
            total,
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            cells = [
                c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            self.stdout.write("  ".join(cells).rstrip())
        if not records:
            self.stderr.write(f"No usage recorded since {since.isoformat()}.", style_func=lambda text: text)

    def handle_budget(self, options: dict[str, Any]) -> None:
        if (options["prefix"] is None) == (options["owner"] is None):
            raise CommandError(
                "Name a key by its PREFIX, or an owner with --owner USERNAME (one of the two)."
            )
        if options["period"] is not None and options["limit"] is None:
            raise CommandError("--period goes with --limit: give the amount too.")
        if options["owner"] is not None:
            user = self.get_user(options["owner"])
            current = OwnerBudget._base_manager.using(decision_db()).filter(user=user).first()
            if options["clear"] or options["limit"] is not None:
                period = self.budget_period(options, current.period if current else "")
                self.committed(keys.set_owner_budget, user, options["limit"], period)
            who = f"Owner {user.get_username()} (all their keys)"
            shown = [(who, self.owner_budget_of(user))]
            document: dict[str, Any] = {"owner": user.get_username()}
        else:
            api_key = self.get_key(options["prefix"])
            if options["clear"] or options["limit"] is not None:
                period = self.budget_period(options, api_key.budget_period)
                api_key = self.committed(keys.set_budget, api_key, options["limit"], period)
            key_budget, owner_budget = self.budgets_of(api_key)
            owner = api_key.user.get_username() if api_key.user else None
            shown = [(f"Key {api_key.prefix} ({api_key.name})", key_budget)]
            if owner_budget is not None:
                shown.append((f"Owner {owner} (all their keys)", owner_budget))
            document = {"prefix": api_key.prefix, "name": api_key.name, "owner": owner}
            document["owner_budget"] = self.standing_record(owner_budget)
        document["budget"] = self.standing_record(shown[0][1])
        if options["json"]:
            self.stdout.write(json.dumps({**document, "currency": conf.CURRENCY}, indent=2))
            return
        if self.unpublished is not None:
            return  # handle() says why the change is not applied everywhere yet
        if options["clear"] or options["limit"] is not None:
            self.say("Applied from the next request on.")
        for who, standing in shown:
            self.stdout.write(f"{who}: {self.standing_text(standing)}")

    def budget_period(self, options: dict[str, Any], current: str) -> str:
        """The period a change gives: --period, else the budget's own; "" to remove it."""
        if options["clear"]:
            return ""
        period: str = options["period"] or current
        if not period:
            raise CommandError(f"--limit needs --period: one of {', '.join(BUDGET_PERIODS)}.")
        return period

    def budgets_of(self, api_key: APIKey) -> tuple[budgets.Standing | None, budgets.Standing | None]:
        found = {budget.scope: budgets.standing(budget) for budget in budgets.budgets_of(api_key)}
        return found.get(budgets.KEY), found.get(budgets.OWNER)

    def owner_budget_of(self, user: Any) -> budgets.Standing | None:
        budget = OwnerBudget._base_manager.using(decision_db()).filter(user=user).first()
        if budget is None:
            return None
        return budgets.standing(budgets.Budget(budgets.OWNER, str(user.pk), budget.limit, budget.period))

    def standing_record(self, standing: budgets.Standing | None) -> dict[str, Any] | None:
        if standing is None:
            return None
        return {
            "limit": prices.amount_text(standing.budget.limit),
            "period": standing.budget.period,
            "spent": prices.amount_text(standing.spent),
            "remaining": prices.amount_text(standing.remaining),
            "period_start": standing.start.isoformat(),
            "resets_at": None if standing.end is None else standing.end.isoformat(),
        }

    def standing_text(self, standing: budgets.Standing | None) -> str:
        if standing is None:
            return "no budget."
        record = self.standing_record(standing)
        assert record is not None
        currency = conf.CURRENCY
        per = per_period(standing.budget.period) + ("" if standing.end is None else " (UTC)")
        since = "" if standing.end is None else f" since {record['period_start']}"
        resets = "never resets" if standing.end is None else f"resets at {record['resets_at']}"
        return (
            f"{record['limit']} {currency} {per}; spent {record['spent']}{since}, "
            f"{record['remaining']} left; {resets}."
        )

    def handle_invalidate(self, options: dict[str, Any]) -> None:
        values: list[str] = options["clients"]
        if bool(values) + options["all"] + options["pending"] != 1:
            raise CommandError(
                "Name the clients to invalidate, or pass --all or --pending (one of the three)."
            )
        if options["pending"]:
            count = self.publish(lambda: invalidation.republish_pending(decision_db()), "--pending")
            self.stdout.write(f"Republished {count} pending invalidation(s).")
            return
        if options["all"]:
            lookup = conf.CLIENT_LOOKUP_FIELD
            everyone = get_client_model()._default_manager.db_manager(decision_db()).order_by("pk")
            clients = everyone.values_list(lookup, flat=True)
            # A new iterator on each attempt: a failed one has been consumed.
            count = self.publish(lambda: invalidation.publish_clients(clients.iterator(1000)), "--all")
        else:
            chosen = [keys.lookup_value(self.get_client(value)) for value in dict.fromkeys(values)]
            count = self.publish(lambda: invalidation.publish_clients(chosen), " ".join(chosen))
        self.stdout.write(f"Invalidated {count} client(s): every process reloads their decisions.")

    def publish(self, operation: Callable[[], int], target: str) -> int:
        """Run ``operation`` until the cache takes all of it, within PUBLISH_TIMEOUT, or fail."""
        deadline = time.monotonic() + conf.PUBLISH_TIMEOUT
        while True:
            try:
                return operation()
            except invalidation.CacheUnreachable:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not decisions.wait_published(remaining):
                    raise CommandError(
                        f"The cache {conf.CACHE_ALIAS!r} could not be reached within "
                        f"{conf.PUBLISH_TIMEOUT:g} seconds (PUBLISH_TIMEOUT): other processes may "
                        "keep deciding as before for up to "
                        f"{conf.CACHE_TIMEOUT} seconds (CACHE_TIMEOUT). Run "
                        f"`manage.py llm_keys invalidate {target}` again when it is back."
                    ) from None
                # It is back: the whole operation again (a new generation twice is harmless).
            except DatabaseError as exc:
                raise CommandError(f"The database could not be read: {exc}") from exc

    # --- input --------------------------------------------------------------------------

    def get_client(self, value: str) -> models.Model:
        self.refuse_whole_key(value, client=True)
        found = self.find_client(value)
        if found is None:
            raise CommandError(f"No LLM client with {conf.CLIENT_LOOKUP_FIELD} {value!r}.")
        return found

    def find_client(self, value: str) -> models.Model | None:
        try:
            found: models.Model | None = (
                get_client_model()
                ._default_manager.db_manager(decision_db())
                .filter(**{conf.CLIENT_LOOKUP_FIELD: value})
                .first()
            )
            return found
        except (ValueError, TypeError, ValidationError):  # a value the lookup field cannot hold
            return None

    def get_user(self, username: str) -> Any:
        user_model = get_user_model()
        try:
            return user_model._default_manager.db_manager(decision_db()).get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None

    def get_key(self, prefix: str) -> APIKey:
        self.refuse_whole_key(prefix, expected_prefix=True)
        api_key: APIKey | None = APIKey.objects.using(decision_db()).filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        return api_key

    def get_rotation_target(self, value: str) -> APIKey | models.Model:
        return self.get_key_or_client(value, "rotate the key by its prefix")

    def get_key_or_client(self, value: str, ambiguity_hint: str) -> APIKey | models.Model:
        self.refuse_whole_key(value)
        api_key = APIKey.objects.using(decision_db()).filter(prefix=value).first()
        llm_client = self.find_client(value)
        if api_key is not None and llm_client is not None:
            raise CommandError(f"{value!r} is both a key prefix and a client; {ambiguity_hint}.")
        if api_key is None and llm_client is None:
            raise CommandError(f"No API key prefix or LLM client {value!r}.")
        return api_key or llm_client  # type: ignore[return-value]

    def get_days(self, text: str) -> int:
        try:
            days = int(text)
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_USAGE_DAYS:
            raise CommandError(f"--days must be a whole number from 1 to {MAX_USAGE_DAYS}, not {text!r}.")
        return days

    def get_expiry(self, options: dict[str, Any]) -> datetime | None:
        if options["expires_in"] is not None:
            duration = self.parse(keys.parse_duration, options["expires_in"])
            if not duration:
                raise CommandError("--expires-in 0 would expire the key at once; give a later time.")
            return timezone.now() + duration
        if options["expires_at"] is not None:
            return self.parse(keys.parse_expiry, options["expires_at"])
        return None

    def refuse_whole_key(self, value: str, expected_prefix: bool = False, client: bool = False) -> None:
        """Refuse a pasted key (or, where a prefix is expected, anything with a dot) without
        echoing its secret: the message names the part before the dot only. ``client``: the
        argument names a client, never a key."""
        prefix, dot, _secret = value.partition(".")
        if not (crypto.split_key(value) or (expected_prefix and dot)):
            return
        if client:
            raise CommandError(
                f"That looks like a whole API key (prefix {prefix}), secret included, where a client "
                f"is expected: pass the client's {conf.CLIENT_LOOKUP_FIELD}, e.g. support-bot."
            )
        raise CommandError(
            "That looks like a whole API key, secret included: pass only the part before the "
            f"dot (the prefix), e.g. {prefix or conf.KEY_PREFIX + '3f9a2c1b7d4e'}."
        )

    def parse(self, parser: Callable[[str], ParsedT], text: str) -> ParsedT:
        try:
            return parser(text)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    # --- output -------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A line for the human at the terminal, kept out of stdout (which may be captured)."""
        self.stderr.write(message, style_func=lambda text: text)

    def show_plaintext(self, plaintext: str, document: dict[str, Any], options: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(document, indent=2) if options["json"] else plaintext)
        self.stderr.write(ONCE_WARNING, style_func=self.style.WARNING)

    def record(self, api_key: APIKey) -> dict[str, Any]:
        """What may be shown of a key: never its digest or its plaintext."""
        return {
            "prefix": api_key.prefix,
            "name": api_key.name,
            "owner": api_key.user.get_username() if api_key.user else None,
            "clients": sorted(keys.lookup_value(link.llm_client) for link in api_key.client_links.all()),
            "is_active": api_key.is_active,
            "expired": keys.has_expired(api_key),
            "expires_at": self.iso(api_key.expires_at),
            "last_used_at": self.iso(api_key.last_used_at),
            "created_at": self.iso(api_key.created_at),
            "scopes": api_key.scopes,
            "allowed_models": api_key.allowed_models,
            "budget": (
                None
                if api_key.budget_limit is None
                else {"limit": prices.amount_text(api_key.budget_limit), "period": api_key.budget_period}
            ),
            "max_concurrent": api_key.max_concurrent,
        }

    def write_table(self, records: list[dict[str, Any]]) -> None:
        header = (
            *("PREFIX", "NAME", "OWNER", "CLIENTS", "ACTIVE", "EXPIRES", "LAST USED", "SCOPES", "MODELS"),
            *("BUDGET", "MAX CONCURRENT"),
        )
        rows = [header] + [
            (
                r["prefix"],
                r["name"],
                r["owner"] or "-",
                ",".join(r["clients"]) or "-",
                "yes" if r["is_active"] else "revoked",
                (r["expires_at"] or "never") + (" (expired)" if r["expired"] else ""),
                r["last_used_at"] or "never",
                self.listed(r["scopes"], "all"),
                self.listed(r["allowed_models"], "any"),
                f"{r['budget']['limit']}/{r['budget']['period']}" if r["budget"] else "-",
                str(r["max_concurrent"] or "-"),
            )
            for r in records
        ]
        self.write_rows(header, rows[1:])
        if not records:
            self.stderr.write("No keys.", style_func=lambda text: text)

    def listed(self, names: list[str], unrestricted: str) -> str:
        # An empty list restricts nothing: say so rather than show an empty cell.
        if not isinstance(names, list):
            return repr(names)  # written around validation; it grants nothing
        return ",".join(names) or unrestricted

    def iso(self, value: datetime | None) -> str | None:
        return None if value is None else timezone.localtime(value).isoformat(timespec="seconds")

    def when(self, value: datetime | None) -> str:
        return self.iso(value) or "never"

    # --- clients ------------------------------------------------------------------------

    def add_client_parsers(self, actions: Any) -> None:
        client = actions.add_parser("client", help="Create and list LLM clients.")
        client_actions = client.add_subparsers(dest="client_action", required=True, metavar="ACTION")

        create = client_actions.add_parser(
            "create", help="Create a client: public until a key is mapped to it (or --require-api-key)."
        )
        create.add_argument(
            "slug", metavar="SLUG", help="The client's lookup value (its slug), e.g. support-bot."
        )
        create.add_argument("--name", help="A display name, e.g. 'Support bot'.")
        create.add_argument(
            "--require-api-key",
            action="store_true",
            help="Refuse every request until a key is mapped to it, instead of serving it publicly.",
        )
        create.add_argument("--owner", metavar="USERNAME", help="The user the client belongs to.")
        create.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        listing = client_actions.add_parser("list", help="List clients, each public or protected.")
        listing.add_argument("--json", action="store_true", help="Write JSON to stdout.")

    def handle_client_create(self, options: dict[str, Any]) -> None:
        self.refuse_whole_key(options["slug"], client=True)
        client_model = get_client_model()
        lookup = conf.CLIENT_LOOKUP_FIELD
        wanted = {
            "name": ("--name", options["name"]),
            "require_api_key": ("--require-api-key", options["require_api_key"] or None),
            "owner": ("--owner", options["owner"]),
        }
        fields: dict[str, Any] = {}
        for field, (flag, value) in wanted.items():
            if value is None:
                continue
            if not self.has_field(client_model, field):
                raise CommandError(
                    f"The client model {client_model._meta.label} has no {field} field: leave out {flag}."
                )
            fields[field] = value
        if "owner" in fields:
            fields["owner"] = self.get_user(fields["owner"])
        llm_client = client_model(**fields, **{lookup: options["slug"]})
        try:
            llm_client.full_clean()
        except ValidationError as exc:
            flags = {**{field: flag for field, (flag, _) in wanted.items()}, lookup: "SLUG"}
            problems = "; ".join(
                f"{flags.get(field, field)}: {' '.join(messages)}"
                for field, messages in exc.message_dict.items()
            )
            raise CommandError(f"Cannot create client {options['slug']!r}: {problems}") from None
        try:
            with transaction.atomic(using=router.db_for_write(client_model)):
                llm_client.save()
        except IntegrityError as exc:  # a concurrent create of the same lookup value
            raise CommandError(f"Cannot create client {options['slug']!r}: {exc}") from None
        record = self.client_record(llm_client, active_keys=0)
        if options["json"]:
            self.stdout.write(json.dumps(record, indent=2))
            return
        state = (
            "protected: it refuses every request" if record["require_api_key"] else "public: anyone gets in"
        )
        self.stdout.write(f"Created client {record[lookup]} ({state} until a key is mapped to it).")

    def handle_client_list(self, options: dict[str, Any]) -> None:
        client_model = get_client_model()
        rows = keys.with_active_key_count(client_model._default_manager.all())
        if self.has_field(client_model, "owner"):
            rows = rows.select_related("owner")
        records = [
            self.client_record(c, c.active_key_count) for c in rows.order_by(conf.CLIENT_LOOKUP_FIELD, "pk")
        ]
        if options["json"]:
            self.stdout.write(json.dumps(records, indent=2))
            return
        lookup = conf.CLIENT_LOOKUP_FIELD
        header = (lookup.upper(), "NAME", "OWNER", "REQUIRE KEY", "ACTIVE KEYS", "STATE")
        self.write_rows(
            header,
            [
                (
                    r[lookup],
                    r["name"] or "-",
                    r["owner"] or "-",
                    "yes" if r["require_api_key"] else "no",
                    str(r["active_keys"]),
                    "public" if r["public"] else "protected",
                )
                for r in records
            ],
        )
        if not records:
            self.stderr.write("No clients.", style_func=lambda text: text)

    def client_record(self, llm_client: models.Model, active_keys: int) -> dict[str, Any]:
        """What the command shows of a client; a field the model lacks shows as absent."""
        owner = getattr(llm_client, "owner", None)
        require = bool(getattr(llm_client, "require_api_key", False))
        name = getattr(llm_client, "name", None)
        return {
            conf.CLIENT_LOOKUP_FIELD: keys.lookup_value(llm_client),
            "name": None if name is None else str(name),
            "owner": owner.get_username() if owner is not None else None,
            "require_api_key": require,
            "active_keys": active_keys,
            "public": keys.is_public(llm_client, active_keys),
        }

    def has_field(self, model: type[models.Model], name: str) -> bool:
        try:
            model._meta.get_field(name)
        except FieldDoesNotExist:
            return False
        return True

    def write_rows(self, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        table = [header, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def refuse_nul_characters(options: dict[str, Any]) -> None:
    """No shell passes a NUL character, but ``call_command()`` does: PostgreSQL refuses it
    with a DataError, and SQLite would store it in a name."""
    for name, value in options.items():
        if any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, list) else [value])):
            raise CommandError(f"The {name} argument holds a NUL character (\\x00): remove it.")


def accept_negative_values(parser: CommandParser) -> None:
    """Read ``--grace -5d`` as a value (then refused with the duration rules) rather than as an
    unknown option: argparse below Python 3.13 takes only ``-5`` or ``-1.5`` for a value."""
    parser._negative_number_matcher = re.compile(r"-\.?\d")  # Python 3.13's pattern
