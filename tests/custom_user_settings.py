"""The test settings with ``AUTH_USER_MODEL`` swapped for ``custom_user_app.Member``, whose
``is_active`` is a property.

Only ``tests/custom_user/`` runs with them, in a process of its own that
``tests/test_swapped_model.py`` starts: the user model is fixed at process start.
"""

from .settings import *  # noqa: F403
from .settings import INSTALLED_APPS, own_test_database

INSTALLED_APPS = [*INSTALLED_APPS, "tests.custom_user_app"]
AUTH_USER_MODEL = "custom_user_app.Member"

own_test_database("custom_user")
