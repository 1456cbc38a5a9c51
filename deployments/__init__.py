"""Ray Serve deployments, engines and the typed app builder.

Nothing here is imported eagerly: ``deployments.engines.fake`` and
``deployments.local_backend`` work without Ray, and only ``deployments.engines.vllm_engine``
imports vLLM (lazily).
"""
