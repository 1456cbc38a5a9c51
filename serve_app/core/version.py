"""This server's version, as installed (the OpenAPI document and OpenAI's fingerprints show it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    SERVER_VERSION = version("llm-serving-cluster")
except PackageNotFoundError:  # run from a source tree that was never installed
    SERVER_VERSION = "0.0.0"
