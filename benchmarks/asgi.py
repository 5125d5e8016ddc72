"""The ASGI application the server benchmark serves with uvicorn's gunicorn worker."""

import os

from django.core.asgi import get_asgi_application

from benchmarks.processes import freeze_start_up

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
application = get_asgi_application()
freeze_start_up()
