"""Settings of the processes that tests/test_replicas.py starts: the server settings, plus
the PostgreSQL standby at ``DRF_LLM_KEYS_TEST_REPLICA_URL`` as the "replica" database and a
router that sends every read there.

The standby is a physical copy of the primary: it holds the parent's test database under
the same name, a replication lag behind.
"""

import os
from urllib.parse import urlsplit

from tests.server_settings import *  # noqa: F403

standby = urlsplit(os.environ["DRF_LLM_KEYS_TEST_REPLICA_URL"])
DATABASES["replica"] = {  # noqa: F405
    **DATABASES["default"],  # noqa: F405
    "HOST": standby.hostname or "",
    "PORT": str(standby.port or ""),
}
DATABASE_ROUTERS = ["tests.routers.PrimaryReplicaRouter"]
# Sessions in a signed cookie: a session row written at login would be read back from the
# lagging standby by the next request (the admin test logs in).
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
