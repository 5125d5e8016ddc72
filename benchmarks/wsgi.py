"""The WSGI application gunicorn serves in the server benchmark."""

import os

from django.core.wsgi import get_wsgi_application

from benchmarks.processes import freeze_start_up

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
application = get_wsgi_application()
freeze_start_up()
