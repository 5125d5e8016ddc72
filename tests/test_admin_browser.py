"""The admin in a real browser: headless Chromium driven by Selenium against a live server.

One browser for the module. Chromium and chromedriver come from the system
(``scripts/services.sh browser``); Selenium never downloads a driver here. Without them these
tests skip, and fail in CI (DRF_LLM_KEYS_TEST_NO_SKIP).
"""

from __future__ import annotations

import re
import shutil
import unittest
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.utils import timezone
from model_bakery import baker

from drf_llm_keys import crypto
from drf_llm_keys.models import APIKey, LLMClientAPIKey

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # the test extra installs it
    webdriver = None

PASSWORD = "a-browser-test-password"
PLAINTEXT = re.compile(r"llmk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


def start_chromium() -> Any:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if webdriver is None or not chromium or not driver:
        raise unittest.SkipTest("needs selenium, chromium and chromedriver (scripts/services.sh browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    # A driver path given: Selenium Manager, which would download one, is never run.
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.mark.slow
class AdminInABrowser(StaticLiveServerTestCase):
    browser: Any

    @classmethod
    def setUpClass(cls) -> None:
        cls.browser = start_chromium()
        try:
            super().setUpClass()
        except BaseException:
            cls.browser.quit()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.browser.quit()
        super().tearDownClass()

    def setUp(self) -> None:
        self.browser.delete_all_cookies()
        self.owner = baker.make(get_user_model(), username="alice", is_active=True)
        baker.make(get_user_model(), username="bob", is_active=True)
        self.bot = baker.make_recipe("tests.llm_client", name="Support bot", slug="support-bot")

    # --- helpers -----------------------------------------------------------------------

    def open(self, path: str) -> None:
        self.browser.get(f"{self.live_server_url}{path}")

    def log_in(self, *permissions: str) -> None:
        """As a superuser, or as staff with only ``permissions`` (codenames) when given."""
        users = get_user_model().objects
        if permissions:
            user = users.create_user("staff", password=PASSWORD, is_staff=True)
            user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
        else:
            user = users.create_superuser("root", "root@example.com", PASSWORD)
        self.browser.delete_all_cookies()
        self.open("/admin/login/?next=/admin/")
        self.browser.find_element(By.NAME, "username").send_keys(user.get_username())
        self.browser.find_element(By.NAME, "password").send_keys(PASSWORD + Keys.ENTER)
        WebDriverWait(self.browser, 10).until(lambda browser: "/admin/login/" not in browser.current_url)

    def wait_for(self, by: str, value: str) -> Any:
        return WebDriverWait(self.browser, 10).until(
            expected_conditions.presence_of_element_located((by, value))
        )

    def make_key(self, **fields: Any) -> APIKey:
        api_key, _ = APIKey.objects.create_key(user=self.owner, name="test key", **fields)
        LLMClientAPIKey.objects.create(llm_client=self.bot, api_key=api_key)
        return api_key

    def cell(self, row_text: str, field: str) -> str:
        """The text of a changelist cell, in the row that shows ``row_text``."""
        row = self.browser.find_element(By.XPATH, f"//tr[.//*[contains(text(), '{row_text}')]]")
        return str(row.find_element(By.CSS_SELECTOR, f".field-{field}").text.strip())

    def run_action(self, action: str, *api_keys: APIKey) -> None:
        self.open("/admin/drf_llm_keys/apikey/")
        for api_key in api_keys:
            self.browser.find_element(By.CSS_SELECTOR, f"input.action-select[value='{api_key.pk}']").click()
        Select(self.browser.find_element(By.NAME, "action")).select_by_value(action)
        self.browser.find_element(By.NAME, "index").click()

    def messages(self) -> str:
        return str(self.wait_for(By.CSS_SELECTOR, "ul.messagelist").text)

    # --- creating a key -------------------------------------------------------------------

    def test_a_new_key_is_shown_once_and_a_reload_creates_nothing(self) -> None:
        self.log_in()
        self.open("/admin/drf_llm_keys/apikey/add/")
        self.browser.find_element(By.NAME, "name").send_keys("from the browser")
        # The owner, found by typing part of the username into the autocomplete.
        self.browser.find_element(By.CSS_SELECTOR, ".field-user .select2-selection").click()
        self.wait_for(By.CSS_SELECTOR, ".select2-search__field").send_keys("ali")
        WebDriverWait(self.browser, 10).until(
            expected_conditions.text_to_be_present_in_element(
                (By.CSS_SELECTOR, ".select2-results__option--highlighted"), "alice"
            )
        )
        self.browser.switch_to.active_element.send_keys(Keys.ENTER)
        Select(self.browser.find_element(By.NAME, "llm_clients")).select_by_visible_text("Support bot")
        self.browser.find_element(By.NAME, "_save").click()

        plaintext = self.wait_for(By.CSS_SELECTOR, "code.drf-llm-keys-plaintext").text
        assert PLAINTEXT.fullmatch(plaintext)
        api_key = APIKey.objects.get()
        assert (api_key.user, api_key.name) == (self.owner, "from the browser")
        assert api_key.digest == crypto.hash_key(plaintext)
        assert self.browser.current_url.endswith("/admin/drf_llm_keys/apikey/new/")

        self.browser.refresh()
        assert "shown once only" in self.messages()
        assert not PLAINTEXT.search(self.browser.page_source)
        assert APIKey.objects.count() == 1

    # --- revoking ---------------------------------------------------------------------

    def test_revoking_a_clients_last_two_keys_together_is_one_decision(self) -> None:
        first, second = self.make_key(), self.make_key()
        self.log_in()
        self.run_action("revoke_keys", first, second)
        warning = self.wait_for(By.CSS_SELECTOR, ".errornote").text
        assert "the last active keys of support-bot" in warning
        assert self.browser.page_source.count("Among the last active keys of support-bot") == 2

        self.browser.find_element(By.CSS_SELECTOR, "input[type=submit][value=Confirm]").click()
        assert "Nothing was revoked" in self.messages()
        assert APIKey.objects.filter(is_active=True).count() == 2

        self.run_action("revoke_keys", first, second)
        self.wait_for(By.NAME, "allow_public").click()
        self.browser.find_element(By.CSS_SELECTOR, "input[type=submit][value=Confirm]").click()
        assert "Now public: support-bot" in self.messages()
        assert not APIKey.objects.filter(is_active=True).exists()

    # --- permissions ------------------------------------------------------------------

    def offered_actions(self) -> set[str]:
        self.open("/admin/drf_llm_keys/apikey/")
        options = Select(self.browser.find_element(By.NAME, "action")).options
        return {str(option.get_attribute("value")) for option in options} - {""}

    def test_rotating_needs_the_add_permission_as_well_as_change(self) -> None:
        self.make_key()
        self.log_in("view_apikey", "change_apikey")
        assert self.offered_actions() == {"revoke_keys"}
        staff = get_user_model().objects.get(username="staff")
        staff.user_permissions.add(Permission.objects.get(codename="add_apikey"))
        assert self.offered_actions() == {"revoke_keys", "rotate_keys"}

    # --- what the lists say -------------------------------------------------------------

    def test_the_client_list_says_public_or_protected(self) -> None:
        self.make_key()
        baker.make_recipe("tests.llm_client", name="Open bot", slug="open-bot")
        baker.make_recipe("tests.llm_client", name="Locked bot", slug="locked-bot", require_api_key=True)
        self.log_in()
        self.open("/admin/drf_llm_keys/llmclient/")
        states = {slug: self.cell(slug, "state") for slug in ("support-bot", "open-bot", "locked-bot")}
        assert states == {"support-bot": "protected", "open-bot": "public", "locked-bot": "protected"}
        assert self.cell("support-bot", "active_keys") == "1"

    def test_an_expired_key_is_marked_expired(self) -> None:
        working = self.make_key()
        expired = self.make_key(expires_at=timezone.now() + timedelta(days=1))
        APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
        self.log_in()
        self.open("/admin/drf_llm_keys/apikey/")
        assert self.cell(working.prefix, "state") == "active"
        assert self.cell(expired.prefix, "state") == "expired"
        icon = self.browser.find_element(
            By.XPATH, f"//tr[.//*[text()='{expired.prefix}']]//td[contains(@class, 'field-state')]/img"
        )
        assert "icon-alert" in str(icon.get_attribute("src"))
