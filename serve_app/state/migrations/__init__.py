"""Alembic migrations of the state store (run at start-up by :mod:`serve_app.state.migrate`)."""
