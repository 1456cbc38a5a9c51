"""HTTP plumbing shared by every API: streamed responses, framing, disconnects, error rendering.

Pure functions where it can be; imports only ``serve_app.core``.
"""
