"""A server-like OS process for the usage tests, on the parent's test database and cache.

Reads commands on stdin and answers each with one line:

    get PATH [KEY]   the status of a request to PATH made in this process (body consumed)
    flush            usage.flush()'s result, True or False
    pending          the requests this process has counted and not written yet

``USAGE_WORKER_SETTINGS`` (JSON) is its ``DRF_LLM_KEYS``. Closing stdin ends it normally,
so ``atexit`` runs.
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.test import Client  # noqa: E402
from django.test.utils import override_settings, setup_test_environment  # noqa: E402

from drf_llm_keys import usage  # noqa: E402

setup_test_environment()
override_settings(DRF_LLM_KEYS=json.loads(os.environ.get("USAGE_WORKER_SETTINGS", "{}"))).enable()
client = Client()
print("ready", flush=True)
for line in sys.stdin:
    command, *args = line.split()
    answer: object
    if command == "get":
        headers = {"HTTP_AUTHORIZATION": f"Bearer {args[1]}"} if len(args) > 1 else {}
        response = client.get(args[0], **headers)
        if response.streaming:
            b"".join(response.streaming_content)  # the stream's end is where its tokens count
        response.close()
        answer = response.status_code
    elif command == "flush":
        answer = usage.flush()
    elif command == "pending":
        answer = sum(figures[0] for figures in usage.counter.pending().values())
    else:
        answer = f"unknown command {command!r}"
    print(answer, flush=True)
