from django.contrib import admin

from drf_llm_keys.admin import LLMClientAdmin

from .models import Deployment

admin.site.register(Deployment, LLMClientAdmin)
