"""Settings, read once at start-up (YAML file, then environment, then flags) and passed in.

Nothing else in the package reads the environment or a file for settings.

- ``errors``: ``ConfigError``, key paths, and the line a key is on.
- ``values``: ``Secret`` and the small typed readers every section is parsed with.
- ``models``: deployments, model routes and the ``routing`` defaults.
- ``sections``: ``auth``, ``pricing``, ``redis_url``, ``limits`` and ``cache``.
- ``telemetry``: ``metrics``, and tracing from the standard ``OTEL_*`` variables.
- ``settings``: ``Settings``, built from a loaded Sluice document.
- ``litellm``: a LiteLLM proxy config (``model_list``), converted into a Sluice one.
- ``loading``: ``parse`` (YAML text) and ``load`` (file, environment, flags).
"""

from sluice.config.errors import ConfigError, Keys
from sluice.config.loading import load, parse
from sluice.config.models import (
    ANTHROPIC_DEFAULT_BASE_URL,
    OPENAI_DEFAULT_BASE_URL,
    PROVIDERS,
    STRATEGIES,
    Deployment,
    ModelRoute,
    Routing,
    SimulatorSettings,
    Timeouts,
    default_models,
)
from sluice.config.sections import CacheSettings, LimitSettings, ModelCache, ModelLimits
from sluice.config.settings import LOG_LEVELS, Settings
from sluice.config.telemetry import MetricsSettings, TraceSettings
from sluice.config.values import Secret

__all__ = [
    "ANTHROPIC_DEFAULT_BASE_URL",
    "LOG_LEVELS",
    "OPENAI_DEFAULT_BASE_URL",
    "PROVIDERS",
    "STRATEGIES",
    "CacheSettings",
    "ConfigError",
    "Deployment",
    "Keys",
    "LimitSettings",
    "MetricsSettings",
    "ModelCache",
    "ModelLimits",
    "ModelRoute",
    "Routing",
    "Secret",
    "Settings",
    "SimulatorSettings",
    "Timeouts",
    "TraceSettings",
    "default_models",
    "load",
    "parse",
]
