"""One package per wire format (``openai``, ``ollama``): schemas, pure adapters, thin routes.

An API imports the lower layers (core, transport, edge) but never another API.
"""
