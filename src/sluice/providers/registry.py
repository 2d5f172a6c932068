"""One provider per deployment, built on first use and closed at shutdown."""

from __future__ import annotations

from sluice.config import Deployment, Settings
from sluice.providers import Provider
from sluice.providers.http import Pool


def build(deployment: Deployment, pool: Pool) -> Provider:
    if deployment.provider == "simulator":
        from sluice.providers.simulator import SimulatorProvider

        return SimulatorProvider(deployment)
    from sluice.providers.openai import OpenAIProvider

    return OpenAIProvider(deployment, pool)


class Providers:
    def __init__(self, settings: Settings, pool: Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._built: dict[str, Provider] = {}

    def get(self, deployment: Deployment) -> Provider:
        provider = self._built.get(deployment.key)
        if provider is None:
            provider = self._built[deployment.key] = build(deployment, self._pool)
        return provider

    async def aclose(self) -> None:
        for provider in self._built.values():
            await provider.aclose()
        self._built.clear()
