"""Start real local services (MLflow, moto S3, ...) for tests, and always tear them down.

One helper, :func:`start_service`, owns the whole life cycle of a service process:

* it runs in its own session (process group), so the server and every worker it forks are
  killed together at teardown (SIGTERM, then SIGKILL after a grace period);
* stdout and stderr go to a log file, never to a pipe that could fill up and block it;
* readiness is an HTTP GET on a health URL that must answer 200; if the process exits or the
  deadline passes first, the error says so and quotes the tail of the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


class ServiceStartError(RuntimeError):
    """A service process exited or did not become healthy in time."""


@dataclass(frozen=True)
class Service:
    """A running service process and how it was started."""

    name: str
    cmd: tuple[str, ...]
    health_url: str
    log_path: Path
    process: subprocess.Popen
    startup_s: float


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"<log {log_path} unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the service's whole process group (SIGTERM, then SIGKILL after ``grace_s``)."""
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            # poll() reaps the leader; a zombie leader would keep the group "alive".
            if process.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def start_service(
    name: str,
    cmd: Sequence[str],
    health_url: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Iterator[Service]:
    """Run ``cmd`` until the ``with`` block ends; yield once ``health_url`` answers 200.

    ``env`` is added to (and overrides) the current environment.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        deadline = started + timeout
        while not _is_healthy(health_url):
            if process.poll() is not None:
                raise ServiceStartError(
                    f"{name} exited with code {process.returncode} before {health_url} was healthy.\n"
                    f"command: {' '.join(cmd)}\nlast lines of {log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"{name} was not healthy at {health_url} within {timeout:.0f} s.\n"
                    f"command: {' '.join(cmd)}\nlast lines of {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.2)
        startup_s = time.monotonic() - started
        log.info("%s healthy at %s after %.1f s (log: %s)", name, health_url, startup_s, log_path)
        yield Service(
            name=name,
            cmd=tuple(cmd),
            health_url=health_url,
            log_path=log_path,
            process=process,
            startup_s=startup_s,
        )
    finally:
        _stop(process)
