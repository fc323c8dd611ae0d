"""Serve `streamvln-train` as a deployment: runs triggered from the Prefect UI form or on a schedule.

    PREFECT_API_URL=http://prefect:4200/api python -m deployments.serve --name train [--cron "0 3 * * *"]

The process registers the deployment, then polls for its runs and executes each in a
subprocess until stopped (Ctrl-C). The UI renders TrainRequest / LaunchConfig / RegistryConfig
as a form; `--config` pre-fills those parameters from a YAML preset (see configs/).
"""

from __future__ import annotations

import argparse

from flows.presets import preset_parameters
from flows.train import streamvln_train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="train", help="deployment name (runs as streamvln-train/<name>)")
    parser.add_argument("--cron", help="schedule, e.g. '0 3 * * *' for nightly retraining")
    parser.add_argument("--config", help="YAML preset whose sections become default parameters")
    parser.add_argument("--limit", type=int, default=1, help="concurrent runs this process executes")
    args = parser.parse_args(argv)
    streamvln_train.serve(
        name=args.name,
        cron=args.cron,
        parameters=preset_parameters(args.config),
        limit=args.limit,
        tags=["streamvln"],
    )


if __name__ == "__main__":
    main()
