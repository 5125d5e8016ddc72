import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# Django's application, which also writes the usage counts when uvicorn stops (it runs no
# atexit): drf_llm_keys.asgi.
from drf_llm_keys.asgi import get_asgi_application

application = get_asgi_application()
