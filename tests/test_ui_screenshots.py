"""What a person sees, checked in a real headless browser (Debian's Chromium via Playwright).

* Prefect (the default V2 UI): the flow run's Artifacts tab lists `mlflow-run`, `loss-curve` and
  a progress artifact; the loss curve opens as a rendered image, the MLflow link points at the run.
* MLflow: the run page shows the dataset input (name, digest, context) and the `loss` metric, the
  metric chart and the `plots/loss_curve.png` preview; the model version page shows the lineage tags.

Screenshots go to the test's tmp_path and are copied to `test-output/screenshots/`.

Only the `finished_run` fixture knows how the run was made: point it at any finished training
flow run (attributes flow_run_id, mlflow_run_id, tracking_uri, experiment_id) and the tests
stay as they are; everything else is read back from Prefect and MLflow.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tasks.reporting import (
    DATASET_NAME,
    LOSS_CURVE_KEY,
    LOSS_CURVE_PATH,
    MLFLOW_RUN_KEY,
    model_version_url,
    run_page_url,
)
from tests.browser import headless_browser, prefect_ui_server
from tests.reporting_demo import FinishedRun

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = REPO_ROOT / "test-output" / "screenshots"
TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 1000}
PREFECT_UI_COOKIE = "prefect_ui_version"  # prefect.server.api.server.UI_VERSION_COOKIE_NAME
# MLflow 3's assistant panel opens itself on a first visit and covers a third of the page.
CLOSE_MLFLOW_ASSISTANT = """
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
"""


@pytest.fixture(scope="module")
def finished_run(finished_training, mlflow_server) -> FinishedRun:
    """The session's real 2-rank tiny training (tests/conftest.py `finished_training`)."""
    import mlflow

    run = mlflow.MlflowClient(mlflow_server.uri).get_run(finished_training.mlflow_run_id)
    return FinishedRun(
        flow_run_id=finished_training.flow_run_id,
        mlflow_run_id=finished_training.mlflow_run_id,
        tracking_uri=mlflow_server.uri,
        experiment_id=run.info.experiment_id,
        model_name=finished_training.model_name,
        model_version=finished_training.model_version,
    )


@pytest.fixture(scope="module")
def prefect_ui(prefect_harness, tmp_path_factory) -> Iterator[str]:
    """The harness serves no UI: a UI server on the harness's database shows the same runs."""
    import prefect.settings

    home = tmp_path_factory.mktemp("prefect_ui")
    database_url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    with prefect_ui_server(database_url, home, home / "prefect-ui.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with headless_browser() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(CLOSE_MLFLOW_ASSISTANT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOT_DIR / path.name)
    return path


def rendered_image_widths(page, selector: str) -> list[int]:
    """naturalWidth of each matching <img>: 0 for an image the browser could not decode or load."""
    return page.locator(selector).evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : 0)")


def open_prefect_artifact(page, prefect_ui: str, flow_run_id: str, key: str) -> None:
    page.goto(f"{prefect_ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts")
    page.get_by_text(key, exact=True).first.click()
    page.wait_for_url("**/artifacts/artifact/**")


def test_prefect_flow_run_page_shows_artifacts(finished_run, prefect_ui, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{prefect_ui}/v2/runs/flow-run/{finished_run.flow_run_id}?tab=Artifacts")
    for key in (MLFLOW_RUN_KEY, LOSS_CURVE_KEY):
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    expect(page.get_by_text("PROGRESS", exact=True).first).to_be_visible()  # the card's type label
    save_screenshot(page, tmp_path, "prefect-flow-run-artifacts")

    open_prefect_artifact(page, prefect_ui, finished_run.flow_run_id, LOSS_CURVE_KEY)
    curve = page.locator("[data-testid=markdown-display] img[src^='data:image/png']")
    expect(curve).to_be_visible()
    # The page may re-render the card while it loads: wait (or time out: the failure) until a loss
    # curve image in it has decoded at its real width.
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-testid=markdown-display] img[src^='data:image/png']\")]"
        ".some(i => i.complete && i.naturalWidth === 640)",
        timeout=TIMEOUT_MS,
    )
    save_screenshot(page, tmp_path, "prefect-loss-curve")
    loss_curve_path = page.url.split("/v2", 1)[1].split("?")[0]  # /artifacts/artifact/<id>

    open_prefect_artifact(page, prefect_ui, finished_run.flow_run_id, MLFLOW_RUN_KEY)
    run_url = run_page_url(finished_run.tracking_uri, finished_run.experiment_id, finished_run.mlflow_run_id)
    expect(page.locator(f"[data-testid=markdown-display] a[href='{run_url}']")).to_be_visible()
    save_screenshot(page, tmp_path, "prefect-mlflow-link")

    page.goto(f"{prefect_ui}/v2/runs/flow-run/{finished_run.flow_run_id}?tab=Artifacts")
    page.get_by_text("PROGRESS", exact=True).first.click()
    expect(page.get_by_test_id("progress-display")).to_contain_text("Progress: ")

    # The V1 UI (still one click away, "Switch to V1 UI") renders the same markdown image.
    page.context.add_cookies([{"name": PREFECT_UI_COOKIE, "value": "v1", "url": prefect_ui}])
    page.goto(f"{prefect_ui}{loss_curve_path}")
    page.wait_for_function(
        "() => Array.from(document.images)"
        ".some(i => i.src.startsWith('data:image/png') && i.naturalWidth > 0)"
    )
    assert "/v2/" not in page.url
    save_screenshot(page, tmp_path, "prefect-v1-loss-curve")


def test_mlflow_run_page_shows_loss_and_dataset(finished_run, page, tmp_path):
    from playwright.sync_api import expect

    client = mlflow.MlflowClient(finished_run.tracking_uri)
    inputs = client.get_run(finished_run.mlflow_run_id).inputs.dataset_inputs
    dataset = next(i.dataset for i in inputs if i.dataset.name == DATASET_NAME)

    page.goto(run_page_url(finished_run.tracking_uri, finished_run.experiment_id, finished_run.mlflow_run_id))
    expect(page.get_by_text(f"{DATASET_NAME} ({dataset.digest})")).to_be_visible()
    expect(page.get_by_role("link", name="loss", exact=True)).to_be_visible()  # the metrics table row
    save_screenshot(page, tmp_path, "mlflow-run-overview")

    page.get_by_role("tab", name="Model metrics").click()
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    loss_card = cards.filter(has=page.get_by_text("loss", exact=True))  # the title, not "train_loss"
    line = loss_card.locator(".js-plotly-plot path.js-line").first
    expect(line).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+"))  # a drawn line, not an empty chart
    save_screenshot(page, tmp_path, "mlflow-loss-chart")

    page.get_by_role("tab", name="Artifacts").click()
    folder, name = LOSS_CURVE_PATH.split("/")
    page.get_by_text(folder, exact=True).click()
    page.get_by_text(name, exact=True).click()
    preview = page.locator("img[src^='blob:']").first
    expect(preview).to_be_visible()
    assert max(rendered_image_widths(page, "img[src^='blob:']")) == 640
    save_screenshot(page, tmp_path, "mlflow-loss-curve-artifact")

    versions = client.search_model_versions(f"run_id = '{finished_run.mlflow_run_id}'")
    assert versions, "the finished run registered no model version"
    version = versions[0]
    page.goto(model_version_url(finished_run.tracking_uri, version.name, version.version))
    expect(page.get_by_text("data.digest", exact=True)).to_be_visible()
    expect(page.get_by_text(dataset.digest, exact=True)).to_be_visible()
    save_screenshot(page, tmp_path, "mlflow-model-version-lineage")
