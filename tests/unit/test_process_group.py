"""The benchmarks' and the Open WebUI check's child processes stop, with their trees, on SIGINT."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from benchmarks.process_group import process_group

# A child that reports how it would take SIGINT, then starts a grandchild and waits.
CHILD = (
    "import signal, subprocess, sys, time;"
    "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True);"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    "time.sleep(60)"
)


def test_a_child_gets_sigint_back_even_when_its_parent_ignores_it(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started with `&`
    try:
        started = time.monotonic()
        with process_group([sys.executable, "-c", CHILD], log) as proc:
            while not log.read_text().strip() and time.monotonic() - started < 20:
                time.sleep(0.05)
        assert proc.returncode is not None
        assert time.monotonic() - started < 30  # SIGINT stopped it; no 60 s wait for SIGKILL
    finally:
        signal.signal(signal.SIGINT, previous)
    assert log.read_text().split()[0] == "True"
