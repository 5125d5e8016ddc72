"""The example's Django admin at /admin/, in the real server: a superuser logs in and sees
the clients and keys (by prefix, never a secret)."""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from django.contrib.auth import get_user_model

from example_project.llm.server import MANAGE_PY

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-test-password-1"


def create_superuser(env: dict[str, str], username: str) -> None:
    """With the example's own command: its password hasher, not the test settings' fast one."""
    subprocess.run(
        [sys.executable, str(MANAGE_PY), "createsuperuser", "--noinput", "--username", username],
        env={
            **os.environ,
            **env,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "a@example.com",
        },
        check=True,
        capture_output=True,
        timeout=120,
    )


def browser() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def log_in(opener: urllib.request.OpenerDirector, base_url: str, username: str) -> str:
    """Post the login form as a browser does; returns the page it lands on."""
    with opener.open(f"{base_url}/admin/login/?next=/admin/", timeout=30) as page:
        form = page.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, "no CSRF token on the login page"
    data = {"csrfmiddlewaretoken": token[1], "username": username, "password": PASSWORD, "next": "/admin/"}
    with opener.open(f"{base_url}/admin/login/", urllib.parse.urlencode(data).encode(), timeout=30) as page:
        return str(page.read().decode())


def test_the_admin_asks_for_a_login(example_server, db):
    with browser().open(f"{example_server}/admin/", timeout=30) as page:
        assert page.url.startswith(f"{example_server}/admin/login/")
        assert 'name="password"' in page.read().decode()


def test_a_superuser_sees_the_clients_and_keys(example_server, example_env, key):
    api_key, plaintext = key
    create_superuser(example_env, "root")
    opener = browser()
    assert "Site administration" in log_in(opener, example_server, "root")
    with opener.open(f"{example_server}/admin/drf_llm_keys/apikey/", timeout=30) as page:
        keys_page = page.read().decode()
    assert api_key.prefix in keys_page
    assert plaintext.split(".", 1)[1] not in keys_page
    with opener.open(f"{example_server}/admin/drf_llm_keys/llmclient/", timeout=30) as page:
        assert "protected-bot" in page.read().decode()


def test_a_wrong_password_stays_on_the_login_page(example_server, db):
    get_user_model().objects.create_user("mallory", is_staff=True)  # no usable password
    assert "Please enter the correct username and password" in log_in(browser(), example_server, "mallory")


def test_the_admins_styles_are_served(example_server, db):
    with browser().open(f"{example_server}/static/admin/css/base.css", timeout=30) as page:
        assert page.status == 200 and "body" in page.read().decode()
