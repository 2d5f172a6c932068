"""One provider per deployment, built on first use and closed at shutdown. The
registry maps a provider name to its wire; nothing else branches on it."""

from __future__ import annotations

from collections.abc import Callable

from sluice.config import Deployment, Settings
from sluice.events import ChatRequest, WireFormat
from sluice.providers import Provider, Wire
from sluice.providers.http import Pool

#: The headers that carry the current trace upstream (``traceparent``); None: tracing off.
TraceHeaders = Callable[[], dict[str, str]]


def _openai_chat(deployment: Deployment) -> Wire:
    from sluice.providers.openai_chat import OpenAIChatWire

    return OpenAIChatWire()


def _openai_responses(deployment: Deployment) -> Wire:
    from sluice.providers.openai_responses import OpenAIResponsesWire

    return OpenAIResponsesWire()


def _anthropic(deployment: Deployment) -> Wire:
    from sluice.providers.anthropic import AnthropicWire

    return AnthropicWire(deployment.max_tokens_default)


#: provider name → its wire for one deployment (made on demand).
WIRES: dict[str, Callable[[Deployment], Wire]] = {
    "openai": _openai_chat,
    "openai-responses": _openai_responses,
    "anthropic": _anthropic,
}


def wire_format(provider: str) -> WireFormat:
    """The wire format a provider speaks (``sluice`` for the simulator)."""
    if provider == "simulator":
        return "sluice"
    return WIRES[provider](Deployment(name="", provider=provider)).format


def build(deployment: Deployment, pool: Pool, trace: TraceHeaders | None = None) -> Provider:
    if deployment.provider == "simulator":
        from sluice.providers.simulator import SimulatorProvider

        return SimulatorProvider(deployment)
    from sluice.providers.upstream import HTTPProvider

    wire = WIRES[deployment.provider](deployment)
    return HTTPProvider(deployment, pool, wire, owned_by=deployment.provider, trace=trace)


class Providers:
    def __init__(self, settings: Settings, pool: Pool, trace: TraceHeaders | None = None) -> None:
        self._settings = settings
        self._pool = pool
        self._trace = trace
        self._built: dict[str, Provider] = {}

    def get(self, deployment: Deployment) -> Provider:
        provider = self._built.get(deployment.key)
        if provider is None:
            provider = self._built[deployment.key] = build(deployment, self._pool, self._trace)
        return provider

    async def count_tokens(self, deployment: Deployment, request: ChatRequest) -> int | None:
        """The upstream's own count of ``request``'s input tokens when the deployment's
        format has a count endpoint (Anthropic's ``count_tokens``); None otherwise."""
        if deployment.provider != "anthropic":
            return None
        from sluice.providers import anthropic
        from sluice.providers.upstream import HTTPProvider

        provider = self.get(deployment)
        assert isinstance(provider, HTTPProvider)
        body = anthropic.count_body(request, deployment.upstream_model(request.model))
        return anthropic.counted(await provider.call(anthropic.COUNT_PATH, body, request))

    async def aclose(self) -> None:
        for provider in self._built.values():
            await provider.aclose()
        self._built.clear()
