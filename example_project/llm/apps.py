from django.apps import AppConfig


class LLMConfig(AppConfig):
    name = "example_project.llm"
    label = "example_llm"
    verbose_name = "Example LLM endpoints"
