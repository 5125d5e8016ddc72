"""What a process keeps: one object per cache alias, renewed by reset(), a settings change
or a fork."""

from __future__ import annotations

import os

import pytest
from django.test import override_settings

from drf_llm_keys import decisions
from drf_llm_keys.decisions import Tag, invalidation
from drf_llm_keys.decisions.state import HeldEntries

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"


def test_one_object_per_cache_alias(settings):
    other = {"BACKEND": LOCMEM, "LOCATION": "other"}
    settings.CACHES = {**settings.CACHES, "other": other}
    assert decisions.get_decision_cache() is decisions.get_decision_cache("default")
    assert decisions.get_decision_cache("other") is not decisions.get_decision_cache("default")
    assert decisions.get_decision_cache("other").backend.alias == "other"


def test_reset_forgets_held_entries_and_pending_invalidations():
    before = decisions.get_decision_cache()
    before.held.put("entry", (Tag("token"), {"client": None}))
    before.pending["generation"] = 0.0
    decisions.reset()
    after = decisions.get_decision_cache()
    assert after is not before
    assert after.held.get("entry") is None and decisions.pending_invalidations() == frozenset()


@pytest.mark.parametrize(
    "setting",
    [
        {"DRF_LLM_KEYS": {"LOCAL_ENTRIES": 7}},
        {
            "CACHES": {
                "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "x"}
            }
        },
        {"DRF_LLM_KEYS_CLIENT_MODEL": "x.Y"},
    ],
)
def test_a_settings_change_renews_it(setting):
    before = decisions.get_decision_cache()
    with override_settings(**setting):
        during = decisions.get_decision_cache()
        assert during is not before
    assert decisions.get_decision_cache() is not during


def test_other_settings_leave_it_alone():
    before = decisions.get_decision_cache()
    with override_settings(USE_TZ=False):
        assert decisions.get_decision_cache() is before


def test_reset_stops_the_retry_timer(flaky, monkeypatch):
    monkeypatch.setattr(invalidation, "RETRY_DELAYS", (60.0,))
    flaky.down = True
    assert not decisions.publish({"generation"})
    flaky.down = False
    timer = decisions.get_decision_cache().retry_timer
    assert timer is not None and timer.is_alive()
    decisions.reset()
    timer.join(2)
    assert not timer.is_alive()


def test_a_forked_child_starts_afresh():
    parent = decisions.get_decision_cache()
    parent.held.put("entry", (Tag("token"), {"client": None}))
    pid = os.fork()
    if pid == 0:
        child = decisions.get_decision_cache()
        os._exit(0 if child is not parent and child.held.get("entry") is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert decisions.get_decision_cache() is parent


def test_held_entries_drop_the_least_recently_used_first():
    held = HeldEntries(2)
    for name in ("a", "b"):
        held.put(name, (Tag(name), {}))
    assert held.get("a") is not None  # used: "b" is now the least recent
    held.put("c", (Tag("c"), {}))
    assert held.get("b") is None
    assert [name for name in ("a", "c") if held.get(name) is not None] == ["a", "c"]
    held.put("a", (Tag("again"), {}))  # replaced in place: nothing dropped
    assert held.get("a") == (Tag("again"), {}) and held.get("c") is not None
