"""A database that is not there, for the outage tests; a connection on which psycopg
prepares its statements; a PostgreSQL standby that lags, for the read replica test and the soak."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

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


@contextmanager
def psycopg_prepared() -> Iterator[Any]:
    """The default connection, new, with psycopg 3 preparing every statement it runs
    (docs/ecosystem.md's options, with a threshold of 0: prepared at once). Closed at the
    end, with what it prepared."""
    connection = connections["default"]
    saved = dict(connection.settings_dict["OPTIONS"])
    connection.close()
    connection.settings_dict["OPTIONS"].update(server_side_binding=True, prepare_threshold=0)
    try:
        yield connection
    finally:
        connection.close()
        connection.settings_dict["OPTIONS"] = saved


def prepared_statements() -> list[str]:
    """The statements prepared on the default connection's session."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def standby_server(url: str) -> dict[str, Any]:
    """psycopg's connection arguments for the standby at ``url`` (its user: the primary's by default)."""
    parts = urlsplit(url)
    user = parts.username or connections["default"].settings_dict["USER"]
    return {"host": parts.hostname, "port": parts.port, "user": user}


@contextmanager
def standby_delay(server: dict[str, Any], delay: str) -> Iterator[None]:
    """The standby replays each commit ``delay`` (``"1s"``, ``"500ms"``) after the primary
    made it, until the block ends (``recovery_min_apply_delay``)."""
    import psycopg

    def apply(statement: str) -> None:
        # A superuser may change a standby's settings too; the startup process rereads them.
        with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
            in_recovery = admin.execute("SELECT pg_is_in_recovery()").fetchone()
            if in_recovery != (True,):
                raise RuntimeError(f"{server['host']}:{server['port']} is not a standby")
            admin.execute(statement)
            admin.execute("SELECT pg_reload_conf()")

    apply(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
    try:
        yield
    finally:
        apply("ALTER SYSTEM RESET recovery_min_apply_delay")
