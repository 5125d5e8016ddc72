"""The test settings with the client model swapped for ``swapped_app.Deployment``.

Only ``tests/swapped/`` runs with them, in a process of its own that
``tests/test_swapped_model.py`` starts: the swappable setting is fixed at process start.
"""

from .settings import *  # noqa: F403
from .settings import INSTALLED_APPS, own_test_database

INSTALLED_APPS = [*INSTALLED_APPS, "tests.swapped_app"]
DRF_LLM_KEYS_CLIENT_MODEL = "swapped_app.Deployment"

own_test_database("swapped")
