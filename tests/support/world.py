"""The clients and keys the fault tests start from, and the whole decision table on them."""

from __future__ import annotations

from typing import Any

from model_bakery import baker

from . import bearer

URL = "/clients/{}/echo/"


class World:
    """A protected client with a valid, a spare and a revoked key, another client's key;
    a client protected by its flag alone; a public client."""

    def __init__(self, make_key: Any) -> None:
        self.protected = baker.make_recipe("tests.llm_client", slug="protected-bot")
        self.flagged = baker.make_recipe("tests.protected_client", slug="flagged-bot")
        self.public = baker.make_recipe("tests.llm_client", slug="public-bot")
        self.other = baker.make_recipe("tests.llm_client", slug="other-bot")
        self.valid, self.valid_key = make_key(self.protected)
        make_key(self.protected)  # keeps the client protected when the valid one is revoked
        self.revoked, self.revoked_key = make_key(self.protected)
        _, self.other_key = make_key(self.other)
        self.revoked.is_active = False
        self.revoked.save()

    def assert_decisions(self, api: Any) -> None:
        """The decision table, all of it: nothing opened, nothing valid refused."""
        served = api.get(URL.format("protected-bot"), **bearer(self.valid_key))
        assert served.status_code == 200, served.content
        assert served.json()["key"] == self.valid.prefix
        wrong_secret = self.valid_key[:-1] + ("A" if self.valid_key[-1] != "A" else "B")
        for slug, headers in [
            ("protected-bot", {}),
            ("protected-bot", bearer(self.revoked_key)),
            ("protected-bot", bearer(self.other_key)),
            ("protected-bot", bearer(wrong_secret)),
            ("protected-bot", {"HTTP_X_API_KEY": self.revoked_key}),
            ("flagged-bot", {}),
            ("flagged-bot", bearer(self.valid_key)),
        ]:
            refused = api.get(URL.format(slug), **headers)
            assert refused.status_code == 401, (slug, headers, refused.content)
        public = api.get(URL.format("public-bot"), **bearer(self.revoked_key))
        assert public.json() == {"user": None, "key": None}

    def revoke_valid(self) -> None:
        self.valid.is_active = False
        self.valid.save()

    def assert_valid_refused(self, api: Any) -> None:
        response = api.get(URL.format("protected-bot"), **bearer(self.valid_key))
        assert response.status_code == 401, response.content
