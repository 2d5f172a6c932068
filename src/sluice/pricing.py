"""What a request cost: a price table per model, in USD per million tokens.

The defaults are OpenAI's and Anthropic's published standard-tier list prices
(``PRICES_AS_OF``; Anthropic's models released since, to Claude Opus 4.5, at their
launch prices), for the models, their dated snapshots and Anthropic's aliases.
Reasoning (thinking) tokens are billed as output tokens and are already counted in
``output_tokens``. Input tokens include cached ones (Anthropic's cache reads and writes
too) and are all priced as plain input: cache-read discounts and the Batch API are not
applied, and Anthropic's cache writes (1.25x input) are counted at 1x. The config's
``pricing:`` section adds models or overrides these.

A model that is in neither has an unknown cost (``None``), never a silent zero. An
answer no upstream was paid for (the simulator's) costs ``FREE``, unless the config's
``pricing:`` names its model (to try budgets offline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per million input (prompt) tokens
    output: float  # USD per million output (completion) tokens


#: The price of an answer generated in the gateway itself.
FREE = Price(0.0, 0.0)


def _same(price: Price, *names: str) -> dict[str, Price]:
    return dict.fromkeys(names, price)


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        **_same(Price(2.50, 10.00), "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"),
        **_same(Price(0.15, 0.60), "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        **_same(Price(2.00, 8.00), "gpt-4.1", "gpt-4.1-2025-04-14"),
        **_same(Price(0.40, 1.60), "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        **_same(Price(0.10, 0.40), "gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
        **_same(Price(2.00, 8.00), "o3", "o3-2025-04-16"),
        **_same(Price(1.10, 4.40), "o4-mini", "o4-mini-2025-04-16"),
        **_same(Price(0.50, 1.50), "gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
        # Anthropic.
        **_same(Price(5.00, 25.00), "claude-opus-4-5", "claude-opus-4-5-20251101"),
        **_same(Price(15.00, 75.00), "claude-opus-4-1", "claude-opus-4-1-20250805"),
        **_same(Price(15.00, 75.00), "claude-opus-4-0", "claude-opus-4-20250514"),
        **_same(Price(3.00, 15.00), "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
        **_same(Price(3.00, 15.00), "claude-sonnet-4-0", "claude-sonnet-4-20250514"),
        **_same(Price(3.00, 15.00), "claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"),
        **_same(Price(1.00, 5.00), "claude-haiku-4-5", "claude-haiku-4-5-20251001"),
        **_same(Price(0.80, 4.00), "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
        "claude-3-haiku-20240307": Price(0.25, 1.25),
        # Embeddings: input tokens only.
        "text-embedding-3-small": Price(0.02, 0.0),
        "text-embedding-3-large": Price(0.13, 0.0),
        "text-embedding-ada-002": Price(0.10, 0.0),
    }
)


class PriceTable:
    """The configured prices over the defaults."""

    def __init__(self, configured: Mapping[str, Price] | None = None) -> None:
        self._configured = dict(configured or {})
        self._prices = {**DEFAULT_PRICES, **self._configured}

    def price(self, *names: str | None, listed: bool = True) -> Price | None:
        """The price of the first name that has one (public name, then upstream model);
        with ``listed=False``, among the configured prices only."""
        prices = self._prices if listed else self._configured
        for name in names:
            if name is not None:
                found = prices.get(name)
                if found is not None:
                    return found
        return None

    @staticmethod
    def cost(
        price: Price | None, input_tokens: int | None, output_tokens: int | None
    ) -> float | None:
        if price is None or input_tokens is None or output_tokens is None:
            return None
        return (input_tokens * price.input + output_tokens * price.output) / 1_000_000
