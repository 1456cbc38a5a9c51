"""Engines: the fake one (deterministic, for tests and laptops) and vLLM."""
