"""A child process in its own session, stopped with its whole tree on the way out.

Shared by the benchmark's servers and ``scripts/openwebui_check.py``; standard library only,
since that script runs in Open WebUI's own venv.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_sigint() -> None:
    # A parent started in the background inherits SIGINT ignored, and so would the child: then
    # `serve run` would not shut Serve down on SIGINT (HAProxy outlives a SIGKILLed stack).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def process_group(cmd: list[str], log_file: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (output to ``log_file``); on exit SIGINT its process group, SIGKILL after 60 s."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True,
                                preexec_fn=_default_sigint)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
