"""A throwaway PostgreSQL server for the tests, started from the binaries on PATH (FACTS.md).

``initdb`` refuses to run as root, so as root (CI) the server runs as the ``postgres`` user in a
folder that user owns. Tests that need it skip only where no PostgreSQL is installed at all.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tests.servers import free_port


def postgres_available() -> bool:
    """Whether PostgreSQL's server binaries are installed here."""
    return all(shutil.which(tool) for tool in ("initdb", "pg_ctl", "postgres"))


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start an empty server on a free loopback port; yields its ``postgresql://`` URL."""
    folder = tempfile.mkdtemp(prefix="pg-test-")
    data = os.path.join(folder, "data")
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = free_port()
    subprocess.run(_as_server_user(["initdb", "-D", data, "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_server_user(["pg_ctl", "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w",
                                    "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user(["pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
