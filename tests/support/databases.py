"""A database that is not there, for the outage tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from . import free_port


@contextmanager
def database_outage(tmp_path: os.PathLike[str]) -> Iterator[None]:
    """Point the default connection at a database that is not there (a closed loopback
    port: refused at once), then back."""
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = os.path.join(tmp_path, "no-such-dir", "db.sqlite3")
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
