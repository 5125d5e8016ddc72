"""The test settings with the client model swapped for ``swapped_app.Deployment``.

Only ``tests/swapped/`` runs with them, in a process of its own that
``tests/test_swapped_model.py`` starts: the swappable setting is fixed at process start.
"""

import os

from .settings import *  # noqa: F403
from .settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.swapped_app"]
DRF_LLM_KEYS_CLIENT_MODEL = "swapped_app.Deployment"

# A test database of its own, beside the one of the run that starts this one.
_database = DATABASES["default"]
if _database["ENGINE"].endswith("sqlite3"):
    _name = f"drf_llm_keys_test_swapped_{os.getpid()}.sqlite3"
    _database["TEST"] = {"NAME": os.path.join(os.path.dirname(_database["TEST"]["NAME"]), _name)}
else:
    _database["TEST"] = {**_database.get("TEST", {}), "NAME": f"test_{_database['NAME']}_swapped"}
