"""The suites of tests/swapped/, on a swapped client model, and tests/custom_user/, on a
swapped user model, each in a process of its own.

``DRF_LLM_KEYS_CLIENT_MODEL`` and ``AUTH_USER_MODEL`` are read once, when the models load,
so a swapped model cannot be tried in this process. The child gets this run's database and
cache variables (``DRF_LLM_KEYS_TEST_*``); its settings give it a test database of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


def run_swapped_suite(suite: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "DRF_LLM_KEYS_TEST_DB_NAME"}
    env["DJANGO_SETTINGS_MODULE"] = f"tests.{suite}_settings"
    command = [sys.executable, "-m", "pytest", f"tests/{suite}", "--ds", f"tests.{suite}_settings"]
    completed = subprocess.run(
        [*command, "-p", "no:cacheprovider", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return completed.returncode, completed.stdout + completed.stderr


@pytest.mark.parametrize("suite", ["swapped", "custom_user"])
def test_the_swapped_model_suite_passes(suite):
    returncode, output = run_swapped_suite(suite)
    lines = output.strip().splitlines()
    counts = {kind.rstrip("s"): int(n) for n, kind in SUMMARY.findall(lines[-1] if lines else "")}
    assert returncode == 0, output
    assert counts.get("passed", 0) > 0, output
    assert not counts.get("failed") and not counts.get("error"), output
