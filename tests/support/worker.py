"""A second OS process for the cross-process tests.

Reads lines ``SLUG [KEY]`` on stdin and answers each with the status code of a request to
that client's endpoint, made in this process against the shared database and cache (a
``SLUG`` starting with ``/`` is the path to request instead); and lines
``manage COMMAND ARGS...``, answered "ok" or "CommandError: MESSAGE" on one line. After
the line ``die-after-commit`` (answered "armed"), the next transaction that saves a row
kills this process (SIGKILL) once it has committed, before any of its on-commit work runs:
a writer that dies between its commit and its publish. ``login USERNAME`` logs the
requests that follow in ("ok"); ``post PATH JSON`` posts that form data, answered with the
status code; ``json PATH [KEY]`` gets the path and answers its JSON body on one line.
"""

import io
import json
import os
import shlex
import signal
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import CommandError, call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models.signals import pre_save  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

setup_test_environment()
client = Client()


def die_after_commit(using, **kwargs):
    # Registered before the save's own on-commit work (its post_save receivers'): runs first.
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL), using=using)


print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "die-after-commit":
        pre_save.connect(die_after_commit)
        print("armed", flush=True)
        continue
    if line.startswith("login "):
        client.force_login(get_user_model()._default_manager.get_by_natural_key(line.split()[1]))
        print("ok", flush=True)
        continue
    if line.startswith("post "):
        _, path, data = line.split(" ", 2)
        print(client.post(path, json.loads(data)).status_code, flush=True)
        continue
    if line.startswith("json "):
        _, path, *key = line.split()
        headers = {"HTTP_AUTHORIZATION": f"Bearer {key[0]}"} if key else {}
        print(json.dumps(client.get(path, **headers).json()), flush=True)
        continue
    if line.startswith("manage "):
        try:
            call_command(*shlex.split(line)[1:], stdout=io.StringIO(), stderr=io.StringIO())
            print("ok", flush=True)
        except CommandError as exc:
            print("CommandError: " + " ".join(str(exc).split()), flush=True)
        continue
    slug, _, key = line.strip().partition(" ")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    path = slug if slug.startswith("/") else f"/clients/{slug}/echo/"
    print(client.get(path, **headers).status_code, flush=True)
