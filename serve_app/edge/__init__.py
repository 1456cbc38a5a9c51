"""Policy in front of every route: the ASGI middleware, API keys, key limits, accounting, metrics.

Imports ``serve_app.core`` and ``serve_app.transport``; implements the core's
:class:`~serve_app.core.observation.RequestObserver` with its per-request context.
"""
