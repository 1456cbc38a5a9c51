"""What every API shares: internal types, the Backend protocol, the gateway, errors, model names.

Imports nothing else of ``serve_app``.
"""
