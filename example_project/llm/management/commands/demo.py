"""``manage.py demo``: the whole mission, step by step, against a real server."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from drf_llm_keys import get_client_model, keys
from drf_llm_keys.conf import conf
from drf_llm_keys.models import APIKey
from example_project.llm.server import MANAGE_PY, running_server

USERNAME = "demo"
PUBLIC, PROTECTED, OTHER = "demo-public", "demo-protected", "demo-other"
OTHER_BUDGET = "0.05"
ADMIN_URL = "http://127.0.0.1:8000/admin/"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    www_authenticate: str | None

    def summary(self) -> str:
        if "error" in self.body:
            text = f'error: "{self.body["error"].get("message")}"'
        else:
            text = f'reply: "{self.body["choices"][0]["message"]["content"]}"'
        if self.www_authenticate:
            text += f"  (WWW-Authenticate: {self.www_authenticate})"
        return text


class Command(BaseCommand):
    help = (
        "Walk through public and protected LLM clients, key rotation with a grace period and "
        "revocation, against a server started for the purpose (or --url). Recreates the demo "
        "clients and keys on each run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            help="Drive a server that is already running (e.g. runserver in another terminal) "
            "with the same database and cache, instead of starting one.",
        )
        parser.add_argument(
            "--grace", type=float, default=3.0, help="Seconds the old key keeps working after rotation."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["grace"] <= 0:
            raise CommandError("--grace must be a positive number of seconds.")
        self.grace = timedelta(seconds=options["grace"])
        self.step_number = 0
        self.setup()
        server: AbstractContextManager[str] = (
            nullcontext(options["url"].rstrip("/"))
            if options["url"]
            # The echo model answers, even where an upstream is configured.
            else running_server({"DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE, "LLM_UPSTREAM_URL": ""})
        )
        with server as base_url:
            self.base_url = base_url
            self.say(f"Server: {base_url}  (each client's OpenAI base_url is {base_url}/v1/clients/<slug>)")
            self.walk_through()
        self.say(self.style.SUCCESS(f"\nAll {self.step_number} steps behaved as expected."))
        self.say_admin_login(options["url"])

    def setup(self) -> None:
        """A fresh start: the demo's own user, clients and keys, whatever a last run left."""
        user_model = get_user_model()
        self.user, _ = user_model._default_manager.get_or_create(
            **{user_model.USERNAME_FIELD: USERNAME}, defaults={"is_active": True}
        )
        client_model = get_client_model()
        client_model._default_manager.filter(slug__in=[PUBLIC, PROTECTED, OTHER]).delete()
        APIKey.objects.filter(user=self.user).delete()
        self.public = client_model._default_manager.create(slug=PUBLIC, name="Demo public bot")
        self.protected = client_model._default_manager.create(slug=PROTECTED, name="Demo protected bot")
        other = client_model._default_manager.create(slug=OTHER, name="Demo other bot")
        self.protected_key, self.protected_plaintext = keys.create_key(
            [self.protected], user=self.user, name="demo key"
        )
        # A spend budget too, at the echo model's demo price (PRICES in settings.py).
        self.other_key, self.other_plaintext = keys.create_key(
            [other],
            user=self.user,
            name="other bot's key",
            allowed_models=["echo"],
            budget_limit=OTHER_BUDGET,
            budget_period="day",
        )
        self.say(
            f"Created clients {PUBLIC} (public: no key), {PROTECTED} (key {self.protected_key.prefix}) "
            f"and {OTHER} (a key of its own, {self.other_key.prefix}, for the model echo only, with a "
            f"budget of {OTHER_BUDGET} {conf.CURRENCY} per day)."
        )

    def walk_through(self) -> None:
        self.heading("A public client serves anyone")
        self.expect(200, PUBLIC, None, "anonymous request")

        self.heading("A protected client needs its own key")
        self.expect(401, PROTECTED, None, "no key")
        self.expect(200, PROTECTED, self.protected_plaintext, f"its key {self.protected_key.prefix}")
        self.expect(401, PROTECTED, self.other_plaintext, f"{OTHER}'s key")

        self.heading("A key restricted to one model")
        # What `manage.py llm_keys create demo-other ... --model echo` does.
        self.expect(200, OTHER, self.other_plaintext, "its key, model echo")
        self.expect(403, OTHER, self.other_plaintext, "its key, model gpt-4o", model="gpt-4o")

        self.heading(f"Rotation with a grace period of {self.grace.total_seconds():g} s")
        old_prefix, old_plaintext = self.protected_key.prefix, self.protected_plaintext
        # What `manage.py llm_keys rotate demo-protected --grace 3s` does.
        _, new_key, new_plaintext = keys.rotate_client_key(self.protected, self.grace)
        expires_at = APIKey.objects.get(prefix=old_prefix).expires_at
        self.say(
            f"  rotated: new key {new_key.prefix}; old key {old_prefix} expires at {expires_at:%H:%M:%S}"
        )
        self.expect(200, PROTECTED, new_plaintext, f"new key {new_key.prefix}")
        self.expect(200, PROTECTED, old_plaintext, f"old key {old_prefix}, within the grace period")
        if expires_at is not None:
            time.sleep(max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.1)
        self.expect(401, PROTECTED, old_plaintext, f"old key {old_prefix}, after the grace period")

        self.heading("Revocation takes effect at once")
        # What `manage.py llm_keys revoke PREFIX` does; the expired old key keeps the client
        # protected, so this is not its last active key.
        keys.revoke_key(new_key)
        self.say(f"  revoked {new_key.prefix} (in this process; the server learns it from the shared cache)")
        self.expect(401, PROTECTED, new_plaintext, f"revoked key {new_key.prefix}")

    def say_admin_login(self, url: str | None) -> None:
        """Where to see the demo's clients and keys next; the demo itself makes no login."""
        self.heading("The admin")
        manage = manage_command()
        superuser = (
            get_user_model()._default_manager.filter(is_superuser=True, is_active=True).order_by("pk").first()
        )
        if superuser is None:
            self.say(f"  No superuser yet: create your login with  {manage} createsuperuser")
        else:
            self.say(f"  Log in as {superuser.get_username()} (a superuser of this database).")
        where = f"open {url.rstrip('/')}/admin/" if url else f"run  {manage} runserver  and open {ADMIN_URL}"
        self.say(
            f"  Then {where}: the demo's clients and keys are under LLM clients and API keys, "
            "and what each key served under Key usage."
        )
        self.say(
            f"  What {self.other_key.prefix} spent of its budget today:  "
            f"{manage} llm_keys budget {self.other_key.prefix}"
        )

    # --- helpers ------------------------------------------------------------------

    def heading(self, text: str) -> None:
        self.say(self.style.MIGRATE_HEADING(f"\n{text}"))

    def say(self, text: str) -> None:
        self.stdout.write(text)

    def expect(self, status: int, slug: str, key: str | None, what: str, model: str = "echo") -> None:
        self.step_number += 1
        reply = self.chat(slug, key, f"Hello from step {self.step_number}", model)
        line = f"  {self.step_number}. POST /v1/clients/{slug}/chat/completions, {what}: {reply.status}"
        if reply.status != status:
            raise CommandError(f"{line}, expected {status}. {reply.summary()}")
        style = self.style.SUCCESS if status < 400 else self.style.WARNING
        self.say(f"{style(line)}  {reply.summary()}")

    def chat(self, slug: str, key: str | None, text: str, model: str = "echo") -> Reply:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/v1/clients/{slug}/chat/completions",
            data=body,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {key}"} if key else {}),
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, json.load(response), None)
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, json.load(error), error.headers.get("WWW-Authenticate"))
        except urllib.error.URLError as error:
            raise CommandError(f"Cannot reach {self.base_url}: {error.reason}") from error
        except ValueError as error:  # a reply that is not JSON: not the example's server
            raise CommandError(f"{self.base_url} did not answer with JSON: is it the example?") from error


def manage_command() -> str:
    """manage.py as this process was started: with the virtual environment's python, named
    ``python`` only when that environment is the active one."""
    active = os.environ.get("VIRTUAL_ENV") == sys.prefix
    return f"{'python' if active else os.path.relpath(sys.executable)} {os.path.relpath(MANAGE_PY)}"
