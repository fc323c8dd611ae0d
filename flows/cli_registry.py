"""`streamvln pull` and `streamvln promote`: the model registry from the command line.

    streamvln pull models:/streamvln@champion work/champion
    streamvln promote --model-name streamvln --version 4 --eval-video-folder data/heldout \\
        --train-video-folder data/r2r

`pull` downloads a registered version, checks its weights against config.json and prints the
checkpoint folder (usable as --model_name_or_path). `promote` scores the version and the current
champion on the same held-out episodes, in this process, and moves the alias only when the
version is strictly better (streamvln_model/registry.py); it prints the decision as JSON. An
unknown model, version or alias, or a held-out folder sharing scenes with the training folders,
ends with exit code 2 (flows/cli.py speaks for every command).
"""

from __future__ import annotations

import argparse
import json
import sys


def _client(args):
    import mlflow

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    return mlflow.MlflowClient()


def _pull(args) -> None:
    from streamvln_model.registry.models import pull

    _client(args)  # sets the tracking URI the download uses
    print(pull(args.uri, args.dest))


def _training_folders(client, name: str, targets: list[str], given: str | None) -> str | None:
    """`--train-video-folder`, else the folders the compared versions' runs recorded."""
    from streamvln_model.registry.models import parse_model_uri
    from streamvln_model.registry.promotion import training_folders

    if given:
        return given
    recorded = (training_folders(client, name, parse_model_uri(uri).version) for uri in targets)
    folders = list(dict.fromkeys(f for run in recorded for f in run))  # in recorded order, once each
    if not folders:
        print(
            "streamvln promote: warning: no training folders known (none given, none recorded by the "
            "versions' runs): the held-out scenes are not checked. Pass --train-video-folder",
            file=sys.stderr,
        )
    return ",".join(folders) or None


def _promote(args) -> None:
    from streamvln_model.registry.heldout import SampleSettings, evaluate_models
    from streamvln_model.registry.models import ModelRef, resolve_version
    from streamvln_model.registry.promotion import evaluation_targets, promote

    client = _client(args)
    resolve_version(client, ModelRef(args.model_name, version=str(args.version)))  # exists? (exit 2)
    targets = evaluation_targets(client, args.model_name, args.version, args.alias)
    train = _training_folders(client, args.model_name, targets, args.train_video_folder)
    settings = SampleSettings.asked(vars(args), args.model_max_length)
    scores = evaluate_models(targets, args.eval_video_folder, train, settings)
    result = promote(client, args.model_name, str(args.version), scores, args.alias, args.metric)
    print(json.dumps(result, indent=None if args.json else 1, sort_keys=True))


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `pull` and `promote` on the `streamvln` parser's subcommands."""
    pull = commands.add_parser("pull", help="download a registered model and print its checkpoint folder")
    pull.add_argument("uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    pull.add_argument("dest", help="a new (or empty) folder")
    pull.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    pull.set_defaults(run=_pull)

    promote = commands.add_parser(
        "promote",
        help="score a registered version against the champion on held-out scenes; promote it if better",
    )
    promote.add_argument("--model-name", required=True)
    promote.add_argument("--version", required=True, help="the candidate version")
    promote.add_argument("--eval-video-folder", required=True, help="held-out folders, comma-separated")
    promote.add_argument(
        "--train-video-folder",
        default=None,
        help="training folders (default: as the versions' runs recorded)",
    )
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--metric", default="exact_turn_match", help="compared first (then action_accuracy)")
    promote.add_argument("--num_frames", type=int, default=None, help="default: StreamVLN's")
    promote.add_argument("--num_history", type=int, default=None, help="default: the model's config")
    promote.add_argument("--num_future_steps", type=int, default=None, help="default: the model's config")
    promote.add_argument("--model_max_length", type=int, default=None, help="default: the model's config")
    promote.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    promote.add_argument("--json", action="store_true", help="one line of JSON")
    promote.set_defaults(run=_promote)
