"""What a request cost: a price table per model, in USD per million tokens.

The defaults are OpenAI's published standard-tier list prices as of June 2025
(``PRICES_AS_OF``), for the models and their current dated snapshots. Reasoning tokens
are billed as output tokens and are already counted in ``output_tokens``; discounts for
cached input and the Batch API are not applied, so for those the cost is an upper
bound. The config's ``pricing:`` section adds models or overrides these.

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
