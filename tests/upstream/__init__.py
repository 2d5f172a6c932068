"""The project's test upstream: a real OpenAI-compatible server with failure scenarios."""
