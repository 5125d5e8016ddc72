from django.db import models

from drf_llm_keys.models import AbstractLLMClient, LLMClientQuerySet


class DeploymentQuerySet(LLMClientQuerySet):  # bulk writes keep invalidating the cache
    def in_region(self, region):
        return self.filter(region=region)


class Deployment(AbstractLLMClient):
    region = models.CharField(max_length=20, default="eu-west")

    objects = DeploymentQuerySet.as_manager()

    class Meta(AbstractLLMClient.Meta):
        base_manager_name = "objects"  # Django's own bulk writes invalidate too
