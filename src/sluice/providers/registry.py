"""One provider per deployment, built on first use and closed at shutdown."""

from __future__ import annotations

import aiohttp

from sluice.config import Deployment, Settings
from sluice.providers import Provider


def build(deployment: Deployment, session: aiohttp.ClientSession) -> Provider:
    if deployment.provider == "simulator":
        from sluice.providers.simulator import SimulatorProvider

        return SimulatorProvider(deployment)
    from sluice.providers.openai import OpenAIProvider

    return OpenAIProvider(deployment, session)


class Providers:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._built: dict[str, Provider] = {}

    def get(self, deployment: Deployment) -> Provider:
        provider = self._built.get(deployment.key)
        if provider is None:
            provider = self._built[deployment.key] = build(deployment, self._session)
        return provider

    async def aclose(self) -> None:
        for provider in self._built.values():
            await provider.aclose()
        self._built.clear()
