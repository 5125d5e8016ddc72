"""Run in processes of their own (no Django): reservations racing on one Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis


def reserve_units(url: str, script_text: str, limit: int, tries: int, start: Any) -> int:
    """Reserve one unit ``tries`` times against ``limit`` once ``start`` is set; the number
    admitted."""
    script = redis.Redis.from_url(url).register_script(script_text)
    start.wait()
    admitted = 0
    for _ in range(tries):
        now = int(time.time() * 1000)
        # A fresh id each time, as the ledger's: a pool process may run two of these tasks.
        args = [now, uuid.uuid4().hex, now + 60000, 60000, 1, limit, 0, 0]  # no alert
        admitted += script(keys=["race:s", "race:h", "race:l", "race:a"], args=args)[0] == b"ok"
    return admitted
