from model_bakery.recipe import Recipe, seq

from drf_llm_keys.models import LLMClient

llm_client = Recipe(LLMClient, name=seq("Client "), slug=seq("client-"))
protected_client = llm_client.extend(require_api_key=True)
