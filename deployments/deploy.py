"""`streamvln deploy`: the shipped deployments (deployments/prefect.yaml) on a Prefect work pool.

    PREFECT_API_URL=http://prefect:4200/api streamvln deploy [--pool NAME] [--names tiny-cpu ...]
    prefect worker start --pool NAME        # or `streamvln worker`: what runs the deployments

Creates the `process` work pool when it does not exist yet, then runs Prefect's own
`prefect deploy` on the shipped file, without prompts, from the checkout root (where the
entrypoints are found; the file's build step records this checkout as the worker's working
directory). A pool that exists is used as it is, whatever its type, so the same command puts
the deployments on a Kubernetes pool an administrator created (docs/DEPLOYMENTS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = Path(__file__).with_name("prefect.yaml")


class DeployFailed(RuntimeError):
    """`prefect deploy` failed, or a deployment of the file is not on the server afterwards."""


@dataclass(frozen=True)
class DeployResult:
    pool: str
    pool_created: bool
    deployments: list[str]  # "<flow name>/<deployment name>", as `prefect deployment run` takes them

    def next_steps(self) -> str:
        """What to run next, printed by `streamvln deploy`."""
        runs = "\n".join(f"  prefect deployment run '{name}'" for name in self.deployments)
        return (
            f"{len(self.deployments)} deployment(s) on work pool {self.pool!r}"
            f"{' (created)' if self.pool_created else ''}.\n"
            f"Start a worker where the flows should run (in this checkout's environment):\n"
            f"  prefect worker start --pool {self.pool}\n"
            f"Then trigger a run from the UI or with:\n{runs}"
        )


def load_prefect_file(prefect_file: Path = PREFECT_FILE) -> dict[str, Any]:
    config = yaml.safe_load(Path(prefect_file).read_text()) or {}
    if not isinstance(config, dict) or not config.get("deployments"):
        raise ValueError(f"{prefect_file}: no `deployments:` list. Fix: restore the shipped file")
    return config


def deployment_names(config: dict[str, Any]) -> list[str]:
    return [deployment["name"] for deployment in config["deployments"]]


def default_pool(config: dict[str, Any], prefect_file: Path = PREFECT_FILE) -> str:
    """The pool the file names (one for all its deployments: the file is the source of truth)."""
    pools = {(deployment.get("work_pool") or {}).get("name") for deployment in config["deployments"]}
    if len(pools) != 1 or None in pools:
        raise ValueError(
            f"{prefect_file}: deployments name the work pools {sorted(map(str, pools))}. "
            "Fix: give every deployment the same work_pool (the shipped file uses one anchor)"
        )
    return pools.pop()


def selected_names(
    config: dict[str, Any], names: Sequence[str], prefect_file: Path = PREFECT_FILE
) -> list[str]:
    """`names` checked against the file (all of them when empty): a typo is an error, not a no-op."""
    known = deployment_names(config)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"{prefect_file}: no deployment named {', '.join(map(repr, unknown))}. "
            f"Fix: choose from {', '.join(known)}"
        )
    return list(names) or known


def require_api_url() -> str:
    """The configured Prefect API: deployments on Prefect's temporary server would vanish with it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError(
            "PREFECT_API_URL is not set: deployments need a Prefect server that outlives this command. "
            "Fix: start one (`prefect server start`) and export "
            "PREFECT_API_URL=http://<host>:4200/api, or `prefect config set PREFECT_API_URL=...`"
        )
    return url


def ensure_process_pool(name: str) -> bool:
    """Create the `process` work pool `name` unless a pool of that name exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return True


@contextmanager
def file_for_pool(config: dict[str, Any], pool: str, prefect_file: Path = PREFECT_FILE):
    """The shipped file when it already names `pool`; else a temporary copy that does.

    `prefect deploy --all` ignores `--pool` when it deploys several deployments, so the pool
    is changed in the file it reads. The copy keeps every other setting of the shipped one.
    """
    if pool == default_pool(config, prefect_file):
        yield prefect_file
        return
    for deployment in config["deployments"]:
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool}
    with tempfile.TemporaryDirectory(prefix="streamvln-deploy-") as folder:
        copy = Path(folder) / "prefect.yaml"
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        yield copy


def prefect_deploy_command(prefect_file: Path, names: Sequence[str] = ()) -> list[str]:
    """`prefect deploy` of `names` (deployment names in the file; none: `--all`) without prompts."""
    selection = [arg for name in names for arg in ("--name", name)] or ["--all"]
    return [
        sys.executable, "-m", "prefect", "deploy", *selection,
        "--prefect-file", str(prefect_file), "--no-prompt",
    ]  # fmt: skip


def run_prefect_deploy(prefect_file: Path, names: Sequence[str] = ()) -> None:
    """Prefect's own deploy, from the checkout root (entrypoints and the build step's folder)."""
    command = prefect_deploy_command(prefect_file, names)
    environment = {**os.environ, "PREFECT_CLI_PROMPT": "false"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False)
    if done.returncode != 0:
        raise DeployFailed(f"`{' '.join(command)}` exited with code {done.returncode} (its output is above)")


def deployment_versions(pool: str, names: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """Deployment name -> ("<flow>/<deployment>", last update) for those of `names` on `pool`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(names))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        )
        return {d.name: (f"{client.read_flow(d.flow_id).name}/{d.name}", d.updated) for d in found}


def applied(
    names: Sequence[str], before: dict[str, tuple[str, Any]], after: dict[str, tuple[str, Any]], pool: str
) -> list[str]:
    """The full names (flow/deployment) of `names`, each of which `prefect deploy` created or updated.

    Prefect prints a warning and skips a deployment whose YAML it cannot validate, with exit
    code 0, so success is read back from the server: new, or updated since `before`.
    """
    missing = [n for n in names if n not in after or after[n][1] == before.get(n, ("", None))[1]]
    if missing:
        raise DeployFailed(
            f"not created or updated on work pool {pool!r} by `prefect deploy`: {', '.join(missing)}. "
            "Fix: see Prefect's warnings above (a field it could not validate)"
        )
    return [after[name][0] for name in names]


def deploy(
    pool: str | None = None, names: Sequence[str] = (), prefect_file: Path = PREFECT_FILE
) -> DeployResult:
    """Create the pool if missing and apply the file's deployments (all, or `names`) to it."""
    config = load_prefect_file(prefect_file)
    pool = pool or default_pool(config, prefect_file)
    selection = selected_names(config, names, prefect_file)
    require_api_url()
    created = ensure_process_pool(pool)
    before = deployment_versions(pool, selection)
    with file_for_pool(config, pool, prefect_file) as file:
        run_prefect_deploy(file, names)
    after = deployment_versions(pool, selection)
    return DeployResult(pool, created, applied(selection, before, after, pool))


def worker_command(pool: str, limit: int | None = None) -> list[str]:
    """`prefect worker start` with this interpreter: a process worker starts each flow run with
    the interpreter it runs in, so this is the environment the flows get."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    return command + (["--limit", str(limit)] if limit else [])
