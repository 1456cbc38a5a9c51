"""Serve a config's graph in one process, without Ray: the ingress over in-process engines.

``python -m deployments.local_server --config config.fake.yaml --port 8001``. Used for development
and by the benchmarks to isolate what Ray Serve adds (our ingress in-process versus the graph).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI

from deployments.app import validate_config
from deployments.engines.registry import build_engine
from deployments.local_backend import LocalBackend
from serve_app.app import create_app
from serve_app.settings import IngressSettings


def load_args(path: Path, app_index: int = 0) -> dict[str, Any]:
    """The ``args`` of one application of a Serve config file."""
    config = yaml.safe_load(path.read_text())
    return config["applications"][app_index]["args"]


def build_local_app(args: dict[str, Any]) -> tuple[FastAPI, LocalBackend]:
    """The ingress app over in-process engines for ``args`` (engines not started yet)."""
    config = validate_config(args)
    cards = config.cards()
    engines = {
        m.name: build_engine(m.engine, cards[m.name], m.engine_args_for(cards[m.name]), m.adapter_catalog())
        for m in config.models
    }
    backend = LocalBackend(engines)
    return create_app(backend, list(cards.values()), IngressSettings(**config.ingress.settings)), backend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config.fake.yaml"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    options = parser.parse_args(argv)
    app, backend = build_local_app(load_args(options.config))
    asyncio.run(_serve(app, backend, options.host, options.port))


async def _serve(app: FastAPI, backend: LocalBackend, host: str, port: int) -> None:
    await backend.start()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    await server.serve()


if __name__ == "__main__":
    main()
