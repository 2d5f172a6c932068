"""The innermost handler: pick the deployment for the model and stream from it."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from sluice.config import Settings
from sluice.errors import ModelNotFound
from sluice.events import ChatRequest
from sluice.policies import Call
from sluice.providers import Batch
from sluice.providers.registry import Providers


def describe(provider: str, model: str, base_url: str) -> str:
    if provider == "simulator":
        return f"simulator:{model}"
    host = base_url.split("/")[2] if "://" in base_url else base_url
    return f"{provider}:{model}@{host}"


class Router:
    def __init__(self, settings: Settings, providers: Providers) -> None:
        self._settings = settings
        self._providers = providers

    def __call__(self, request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
        deployment = self._settings.resolve(request.model)
        if deployment is None:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist or you do not have access to it.",
                param="model",
            )
        upstream_model = deployment.upstream_model(request.model)
        call.deployment = deployment
        call.passthrough = deployment.provider == "openai" and upstream_model == request.model
        call.record.upstream = describe(deployment.provider, upstream_model, deployment.base_url)
        return self._providers.get(deployment).stream(request)
