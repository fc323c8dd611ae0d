"""A real headless browser for UI tests, and a Prefect server that serves the UI.

* :func:`headless_browser`: Debian's ``chromium`` (installed by ``scripts/setup.sh``) driven by
  Playwright for Python through ``executable_path``; Playwright never downloads a browser.
* :func:`prefect_ui_server`: Prefect's test harness runs its API server with the UI switched off
  (``PREFECT_UI_ENABLED=0`` in ``SubprocessASGIServer``), so a second, webserver-only Prefect
  server (UI + API, no background services) is started on the harness's database: what a flow
  run wrote through the harness is what the browser sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.services import free_port, start_service

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
PREFECT_UI_STARTUP_TIMEOUT_S = 120.0


def chromium_executable() -> str:
    """The system Chromium (``STREAMVLN_CHROMIUM`` overrides), or an error that says how to get it."""
    override = os.environ.get("STREAMVLN_CHROMIUM")
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"STREAMVLN_CHROMIUM={override} is not a file; unset it or fix the path")
        return override
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH): run scripts/setup.sh, "
        "which installs Debian's 'chromium' package, or set STREAMVLN_CHROMIUM to a Chromium binary"
    )


@contextlib.contextmanager
def headless_browser():
    """A Playwright ``Browser`` on the system Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(),
            headless=True,
            # --no-sandbox: tests run as root in CI; /dev/shm is small in containers.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def prefect_ui_server(database_url: str, home: Path, log_path: Path) -> Iterator[str]:
    """A webserver-only Prefect server (UI and API) on ``database_url``; yields its base URL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "uvicorn",
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {
        "PREFECT_HOME": str(home),  # the UI's static files are copied under it
        "PREFECT_UI_ENABLED": "true",
        "PREFECT__SERVER_WEBSERVER_ONLY": "1",  # no scheduler/services: the harness runs those
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",  # the harness already migrated it
        "PREFECT_UI_API_URL": f"{base_url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with start_service(
        "prefect ui server",
        cmd,
        health_url=f"{base_url}/api/health",
        log_path=log_path,
        env=env,
        timeout=PREFECT_UI_STARTUP_TIMEOUT_S,
        cwd=home,
    ):
        yield base_url
