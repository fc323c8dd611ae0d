"""`streamvln deploy` and `streamvln worker`: the shipped deployments and the worker that runs them.

Both take the pool from deployments/prefect.yaml unless `--pool` names another; the logic is
in deployments/deploy.py, this module only wires it into the `streamvln` command.
"""

from __future__ import annotations

import argparse
import os
import sys


def _deploy(args: argparse.Namespace) -> None:
    from deployments.deploy import DeployFailed, deploy

    try:
        result = deploy(pool=args.pool, names=args.names or ())
    except DeployFailed as err:
        print(f"streamvln deploy: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    print(result.next_steps())


def _worker(args: argparse.Namespace) -> None:
    from deployments.deploy import default_pool, load_prefect_file, require_api_url, worker_command

    require_api_url()
    command = worker_command(args.pool or default_pool(load_prefect_file()), args.limit)
    sys.stdout.flush()
    os.execv(command[0], command)  # the worker replaces this process: signals reach it directly


def add_deploy_commands(commands: argparse._SubParsersAction) -> None:
    """Register `deploy` and `worker` on the `streamvln` command's subparsers."""
    deploy = commands.add_parser(
        "deploy",
        help="create the work pool if missing and deploy deployments/prefect.yaml (needs PREFECT_API_URL)",
    )
    deploy.add_argument("--pool", help="work pool (default: the one deployments/prefect.yaml names)")
    deploy.add_argument("--names", nargs="+", metavar="NAME", help="only these deployments (default: all)")
    deploy.set_defaults(run=_deploy)

    worker = commands.add_parser(
        "worker", help="run a Prefect worker for the pool with this environment's Python (Ctrl-C stops it)"
    )
    worker.add_argument("--pool", help="work pool (default: the one deployments/prefect.yaml names)")
    worker.add_argument("--limit", type=int, help="most flow runs at once (default: no limit)")
    worker.set_defaults(run=_worker)
