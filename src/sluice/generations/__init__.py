"""Generations that outlive the request that started them: ``service`` (where they run
and how any instance follows them) and ``generation`` (one of them)."""

from sluice.generations.generation import (
    Detach,
    Detached,
    Generation,
    GenerationEvicted,
    GenerationNotFound,
    GenerationTooLarge,
    Info,
    OnCancel,
    ShuttingDown,
)
from sluice.generations.service import Generations

__all__ = [
    "Detach",
    "Detached",
    "Generation",
    "GenerationEvicted",
    "GenerationNotFound",
    "GenerationTooLarge",
    "Generations",
    "Info",
    "OnCancel",
    "ShuttingDown",
]
