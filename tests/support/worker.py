"""A second OS process for the cross-process tests.

Reads lines ``SLUG [KEY]`` on stdin and answers each with the status code of a request to
that client's endpoint, made in this process against the shared database and cache.
"""

import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

setup_test_environment()
client = Client()
print("ready", flush=True)
for line in sys.stdin:
    slug, _, key = line.strip().partition(" ")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    print(client.get(f"/clients/{slug}/echo/", **headers).status_code, flush=True)
