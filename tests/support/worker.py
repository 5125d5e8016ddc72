"""A second OS process for the cross-process tests.

Reads lines ``SLUG [KEY]`` on stdin and answers each with the status code of a request to
that client's endpoint, made in this process against the shared database and cache (a
``SLUG`` starting with ``/`` is the path to request instead); and lines
``manage COMMAND ARGS...``, answered "ok" or "CommandError: MESSAGE" on one line.
"""

import io
import os
import shlex
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.core.management import CommandError, call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

setup_test_environment()
client = Client()
print("ready", flush=True)
for line in sys.stdin:
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
