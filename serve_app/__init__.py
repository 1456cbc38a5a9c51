"""The ingress: one FastAPI app speaking the OpenAI and Ollama APIs over a :class:`Backend`.

The folders are layers, lowest first; a module imports only from its own layer or lower ones
(``tests/unit/test_layers.py`` enforces it). See ``serve_app/README.md`` for the map.

- ``core``: internal types, the Backend protocol and fold, stream helpers, the gateway, errors,
  model names, and the observer protocol the gateway reports through.
- ``transport``: HTTP plumbing (streamed responses, SSE/NDJSON framing, disconnects, error
  rendering, validation-error mapping, unsupported-field headers).
- ``edge``: policy in front of every route (the ASGI middleware, keys, limits, accounting,
  metrics, the per-request context).
- ``apis``: one package per wire format (``openai``, ``ollama``): schemas, pure adapters, thin routes.
- ``app`` and ``settings``: where a reader starts; they assemble the layers.

Nothing here imports Ray or vLLM.
"""
