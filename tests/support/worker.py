"""A second OS process for the cross-process tests.

Reads lines ``SLUG [KEY]`` on stdin and answers each with the status code of a request to
that client's endpoint, made in this process against the shared database and cache (a
``SLUG`` starting with ``/`` is the path to request instead); and lines
``manage COMMAND ARGS...``, answered "ok" or "CommandError: MESSAGE" on one line.
With ``DRF_LLM_KEYS_TEST_DIE_AT`` set to a protocol step's name, it kills itself there.
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

die_at = os.environ.get("DRF_LLM_KEYS_TEST_DIE_AT")
if die_at:
    # A test seam: this process dies (SIGKILL) at that step of the protocol, as a crash would.
    import signal

    from drf_llm_keys.decisions import get_decision_cache

    def die(step: str) -> None:
        if step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    get_decision_cache().backend.on_step = die
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
