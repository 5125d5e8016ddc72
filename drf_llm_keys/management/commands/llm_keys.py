"""``manage.py llm_keys``: create, list, rotate and revoke API keys (see docs/key-management.md).

A plaintext key is written to stdout alone, once, so ``KEY=$(manage.py llm_keys create ...)``
captures just the key; what was done and the warning go to stderr. ``--json`` writes one
JSON document to stdout instead.

Every read runs where keys are written (``decision_db``): an operator sees the previous
command's work at once, and the last-key guard counts keys on the primary, never on a
read replica that may lag behind a revocation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.utils import timezone

from drf_llm_keys import get_client_model, keys
from drf_llm_keys.conf import conf
from drf_llm_keys.models import APIKey, decision_db

ONCE_WARNING = "Store this key now: it cannot be shown again."

ParsedT = TypeVar("ParsedT")


class Command(BaseCommand):
    help = "Create, list, rotate and revoke the API keys of LLM clients."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        create = actions.add_parser("create", help="Create a key mapped to a client; prints it once.")
        create.add_argument("client", metavar="CLIENT", help="The client's lookup value (its slug).")
        create.add_argument("--user", required=True, metavar="USERNAME", help="The key's owner.")
        create.add_argument("--name", required=True, help="A name for the key.")
        create.add_argument("--description", default="")
        self._add_expiry(create, "The key expires")
        create.add_argument("--json", action="store_true", help="Write JSON to stdout.")

        listing = actions.add_parser("list", help="List keys; never a plaintext or a digest.")
        listing.add_argument("client", metavar="CLIENT", nargs="?", help="Only this client's keys.")
        listing.add_argument("--all", action="store_true", help="Include revoked keys.")
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

        revoke = actions.add_parser("revoke", help="Revoke a key; it is refused at once everywhere.")
        revoke.add_argument("prefix", metavar="PREFIX")
        revoke.add_argument(
            "--yes",
            action="store_true",
            help="Also revoke a client's last active key, which makes that client public.",
        )
        revoke.add_argument("--json", action="store_true", help="Write JSON to stdout.")

    def _add_expiry(self, parser: CommandParser, what: str) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--expires-in", metavar="DURATION", help=f"{what} after this long, e.g. 90d.")
        group.add_argument("--expires-at", metavar="ISO-8601", help=f"{what} at this date and time.")

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, f"handle_{options['action']}")
        try:
            handler(options)
        except keys.KeyLifecycleError as exc:
            raise CommandError(str(exc)) from exc

    # --- subcommands --------------------------------------------------------------------

    def handle_create(self, options: dict[str, Any]) -> None:
        llm_client = self.get_client(options["client"])
        user = self.get_user(options["user"])
        api_key, plaintext = keys.create_key(
            [llm_client],
            user=user,
            name=options["name"],
            description=options["description"],
            expires_at=self.get_expiry(options),
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
            new, plaintext = keys.rotate_key(old, grace, expires_at=expires_at)
        else:
            old, new, plaintext = keys.rotate_client_key(target, grace, expires_at=expires_at)
        old.refresh_from_db()
        if old.expires_at is not None and old.expires_at <= timezone.now():
            until = "no longer works"
        else:
            until = f"keeps working until {self.when(old.expires_at)}"
        self.say(f"Rotated {old.prefix} -> {new.prefix} ({new.name}); {old.prefix} {until}.")
        self.show_plaintext(
            plaintext, {"key": plaintext, **self.record(new), "old_key": self.record(old)}, options
        )

    def handle_revoke(self, options: dict[str, Any]) -> None:
        api_key = self.get_key(options["prefix"])
        try:
            made_public = keys.revoke_key(api_key, allow_public=options["yes"])
        except keys.AlreadyRevoked as exc:
            made_public, note = [], str(exc)
        except keys.LastActiveKeyError as exc:
            raise CommandError(f"{exc} Pass --yes to revoke it anyway and make it public.") from exc
        else:
            note = f"Revoked key {api_key.prefix} ({api_key.name}); it is refused from now on."
        public = [keys.lookup_value(c) for c in made_public]
        if options["json"]:
            api_key.refresh_from_db()
            self.stdout.write(json.dumps({**self.record(api_key), "made_public": public}, indent=2))
            return
        self.stdout.write(note)
        if public:
            self.stdout.write(
                self.style.WARNING(f"Now public (served without a key): {', '.join(public)}."),
            )

    # --- input --------------------------------------------------------------------------

    def get_client(self, value: str) -> models.Model:
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
        api_key: APIKey | None = APIKey.objects.using(decision_db()).filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        return api_key

    def get_rotation_target(self, value: str) -> APIKey | models.Model:
        api_key = APIKey.objects.using(decision_db()).filter(prefix=value).first()
        llm_client = self.find_client(value)
        if api_key is not None and llm_client is not None:
            raise CommandError(f"{value!r} is both a key prefix and a client; rotate the key by its prefix.")
        if api_key is None and llm_client is None:
            raise CommandError(f"No API key prefix or LLM client {value!r}.")
        return api_key or llm_client  # type: ignore[return-value]

    def get_expiry(self, options: dict[str, Any]) -> datetime | None:
        if options["expires_in"] is not None:
            duration = self.parse(keys.parse_duration, options["expires_in"])
            if not duration:
                raise CommandError("--expires-in 0 would expire the key at once; give a later time.")
            return timezone.now() + duration
        if options["expires_at"] is not None:
            return self.parse(keys.parse_expiry, options["expires_at"])
        return None

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
        now = timezone.now()
        return {
            "prefix": api_key.prefix,
            "name": api_key.name,
            "owner": api_key.user.get_username() if api_key.user else None,
            "clients": sorted(keys.lookup_value(link.llm_client) for link in api_key.client_links.all()),
            "is_active": api_key.is_active,
            "expired": api_key.expires_at is not None and api_key.expires_at <= now,
            "expires_at": self.iso(api_key.expires_at),
            "last_used_at": self.iso(api_key.last_used_at),
            "created_at": self.iso(api_key.created_at),
        }

    def write_table(self, records: list[dict[str, Any]]) -> None:
        header = ("PREFIX", "NAME", "OWNER", "CLIENTS", "ACTIVE", "EXPIRES", "LAST USED")
        rows = [header] + [
            (
                r["prefix"],
                r["name"],
                r["owner"] or "-",
                ",".join(r["clients"]) or "-",
                "yes" if r["is_active"] else "revoked",
                (r["expires_at"] or "never") + (" (expired)" if r["expired"] else ""),
                r["last_used_at"] or "never",
            )
            for r in records
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if not records:
            self.stderr.write("No keys.", style_func=lambda text: text)

    def iso(self, value: datetime | None) -> str | None:
        return None if value is None else timezone.localtime(value).isoformat(timespec="seconds")

    def when(self, value: datetime | None) -> str:
        return self.iso(value) or "never"
