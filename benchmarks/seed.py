"""The data every endpoint authenticates against, and bulk seeding for the scale runs."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection, transaction
from django.utils import timezone
from knox.models import AuthToken  # type: ignore[import-untyped]
from rest_framework.authtoken.models import Token
from rest_framework_api_key.models import APIKey as PeerAPIKey

from drf_llm_keys import crypto
from drf_llm_keys.conf import conf
from drf_llm_keys.models import APIKey, LLMClient, LLMClientAPIKey

from .views import floor_cache_name

PROTECTED = "protected-bot"
PUBLIC = "public-bot"
# Scale rows take ids from here up, clear of the few rows the ORM creates.
SCALE_ID_BASE = 10_000_000
BATCH = 20_000


@dataclass(frozen=True)
class Credentials:
    ours: str
    ours_prefix: str
    floor: str
    drf_token: str
    knox: str
    api_key: str
    # A key of the protected client with a budget and an in-flight cap (never reached).
    budgeted: str = ""


def reset_database() -> None:
    """Bring the schema up to date and empty every table: the database is the benchmark's."""
    call_command("migrate", verbosity=0, interactive=False)
    call_command("flush", verbosity=0, interactive=False)


def reset_cache() -> None:
    """Remove this benchmark's entries only (by key prefix): the Redis DB may be shared."""
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")
    else:
        cache.clear()


def create_credentials() -> Credentials:
    owner = get_user_model().objects.create_user("bench-owner", password=None)
    protected = LLMClient.objects.create(name="Protected", slug=PROTECTED)
    LLMClient.objects.create(name="Public", slug=PUBLIC)
    api_key, plaintext = APIKey.objects.create_key(user=owner, name="bench")
    LLMClientAPIKey.objects.create(llm_client=protected, api_key=api_key)
    budgeted, budgeted_plaintext = APIKey.objects.create_key(
        user=owner,
        name="bench budgeted",
        budget_limit=Decimal(10**9),
        budget_period="month",
        max_concurrent=1000,
    )
    LLMClientAPIKey.objects.create(llm_client=protected, api_key=budgeted)
    floor = secrets.token_urlsafe(32)
    fill_floor(floor)
    _, knox = AuthToken.objects.create(user=owner)
    _, peer_key = PeerAPIKey.objects.create_key(name="bench")
    return Credentials(
        ours=plaintext,
        ours_prefix=api_key.prefix,
        floor=floor,
        drf_token=Token.objects.create(user=owner).key,
        knox=knox,
        api_key=peer_key,
        budgeted=budgeted_plaintext,
    )


def fill_floor(floor: str) -> None:
    """The floor's cache entry (it has no database row); each process with a local-memory
    cache fills its own."""
    owner = get_user_model()._default_manager.get(username="bench-owner")
    cache.set(floor_cache_name(crypto.hash_key(floor)), {"user_id": owner.pk}, None)


# --- scale ----------------------------------------------------------------------------


def scale_slug(index: int) -> str:
    return f"scale-{index}"


def scale_plaintext(index: int) -> str:
    """A valid key for row ``index``, derived rather than stored: any row can be requested."""
    prefix = f"{conf.KEY_PREFIX}{index:012x}"
    secret = base64.urlsafe_b64encode(hashlib.sha256(f"bench-{index}".encode()).digest()).rstrip(b"=")
    return f"{prefix}.{secret.decode()}"


def scale_count() -> int:
    return int(LLMClient._base_manager.filter(pk__gte=SCALE_ID_BASE).count())


def seed_scale(target: int) -> None:
    """Add clients, keys and their mappings (one key per client) up to ``target`` of each.

    Raw bulk inserts (COPY on PostgreSQL): the model managers would invalidate cache
    entries row by row, and a million ORM saves would take an hour.
    """
    start = scale_count()
    if target <= start:
        return
    owner_id = get_user_model()._base_manager.get(username="bench-owner").pk
    now = timezone.now()
    ids = range(start, target)
    clients = ((SCALE_ID_BASE + i, f"Scale {i}", scale_slug(i), owner_id, False, now, now) for i in ids)
    keys = (_key_row(i, owner_id, now) for i in ids)
    links = ((SCALE_ID_BASE + i, SCALE_ID_BASE + i, SCALE_ID_BASE + i, now) for i in ids)
    with transaction.atomic():
        _insert(
            LLMClient,
            ("id", "name", "slug", "owner_id", "require_api_key", "created_at", "updated_at"),
            clients,
        )
        _insert(
            APIKey,
            (
                "id",
                "user_id",
                "name",
                "description",
                "prefix",
                "digest",
                "is_active",
                "expires_at",
                "last_used_at",
                "created_at",
                "updated_at",
                "scopes",
                "allowed_models",
                "lineage",
                "budget_period",
            ),
            keys,
        )
        _insert(LLMClientAPIKey, ("id", "llm_client_id", "api_key_id", "created_at"), links)
    with connection.cursor() as cursor:
        # Later ORM inserts must not collide with the explicit ids.
        for sql in connection.ops.sequence_reset_sql(no_style(), [LLMClient, APIKey, LLMClientAPIKey]):
            cursor.execute(sql)
        # Statistics and (PostgreSQL) hint bits and visibility map now, untimed, as a settled
        # table of this size would have: otherwise autovacuum and the first reads of the
        # new rows do that work during the measurement.
        command = "VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE"
        for model in (LLMClient, APIKey, LLMClientAPIKey):
            cursor.execute(f"{command} {connection.ops.quote_name(model._meta.db_table)}")


def _key_row(index: int, owner_id: Any, now: Any) -> tuple[Any, ...]:
    plaintext = scale_plaintext(index)
    prefix = plaintext.partition(".")[0]
    return (
        SCALE_ID_BASE + index,
        owner_id,
        f"scale {index}",
        "",
        prefix,
        crypto.hash_key(plaintext),
        True,
        None,
        None,
        now,
        now,
        "[]",  # no scope restriction (JSON, as the database stores it)
        "[]",  # any model
        "",  # never rotated
        "",  # no budget
    )


def _insert(model: Any, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> None:
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
