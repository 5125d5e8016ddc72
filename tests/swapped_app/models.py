"""A project's own client model, swapped in by ``tests.swapped_settings``."""

from django.db import models

from drf_llm_keys.models import AbstractLLMClient, LLMClientQuerySet


class DeploymentQuerySet(LLMClientQuerySet):
    """Built on the library's queryset, so bulk writes keep invalidating."""

    def in_region(self, region: str) -> "DeploymentQuerySet":
        return self.filter(region=region)


class Deployment(AbstractLLMClient):
    region = models.CharField(max_length=20, default="eu-west")
    max_tokens = models.PositiveIntegerField(default=4096)

    objects = DeploymentQuerySet.as_manager()

    class Meta(AbstractLLMClient.Meta):
        verbose_name = "deployment"
        verbose_name_plural = "deployments"
