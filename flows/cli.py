"""`streamvln`: synthetic data and checkpoints, data preview, the end-to-end demo.

Every command speaks in one voice: refused input ends with `streamvln <cmd>: error: <message>`
on stderr and exit code 2 (argparse's own code for bad usage), a failed training with the
failing rank, the log's last lines and its path and exit code 1. `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_REFUSED = 2
# The sample-shape flags (streamvln_model.config.sample_shape.SampleShape, not imported here: the
# parser is built for every command, and the library's first import loads torch).
SHAPE_FLAGS = ("num_frames", "num_history", "num_future_steps")


def _synth_trajectories(args) -> None:
    from streamvln_model.synthetic import write_trajectories

    shape = {"num_future_steps": args.num_future_steps} if args.num_future_steps else {}  # else StreamVLN's
    summary = write_trajectories(
        Path(args.out), episodes=args.episodes, min_steps=args.min_steps, max_steps=args.max_steps,
        image_size=tuple(args.image_size), seed=args.seed, overwrite=args.overwrite, **shape,
    )  # fmt: skip
    print(f"wrote {summary.episodes} episodes, {summary.frames} frames to {summary.out}")


@dataclass(frozen=True)
class _CotrainingSynth:
    """One `synth` command that writes a stage-two co-training format (docs/SYNTHETIC_DATA.md).

    Every option is named as its writer's parameter (`--frames-per-scene` is `frames_per_scene`),
    so one handler, `_synth_cotraining`, runs them all; each also takes OUT, --seed, --overwrite.
    """

    writer: str  # the function of streamvln_model.synthetic that writes the format
    help: str
    options: dict[str, dict[str, Any]]  # writer parameter -> argparse settings of its option
    report: Callable[[Any], str]  # the writer's summary -> what the command prints
    exclusive: dict[str, dict[str, Any]] = field(default_factory=dict)  # at most one of these


_SIZE = {"type": int, "nargs": 2, "default": (64, 48), "metavar": ("W", "H")}
_COTRAINING_SYNTH = {
    "qa": _CotrainingSynth(
        "write_video_qa",
        "LLaVA-Video-178K-style QA: mp4s, frame folders and their JSON",
        {
            "videos": {"type": int, "default": 6},
            "frames": {"type": int, "default": 16},
            "fps": {"type": int, "default": 4},
            "frame_folders": {"type": int, "default": 2, "help": "how many videos to write as jpg folders"},
            "size": _SIZE,
        },
        lambda s: (
            f"wrote {s.videos} videos ({s.mp4_files} mp4 [{s.codec}], {s.frame_folders} frame folders) "
            f"of {s.frames_per_video} frames, {s.turns} QA turns to {s.json_path}"
        ),
    ),
    "scanqa": _CotrainingSynth(
        "write_scanqa",
        "ScanNet posed_images scenes with ScanQA and SQA3D JSONs",
        {
            "scenes": {"type": int, "default": 3},
            "frames_per_scene": {"type": int, "default": 40},
            "questions_per_scene": {"type": int, "default": 3},
            "frame_stride": {"type": int, "default": 1, "help": "frame index step between files"},
            "name_width": {"type": int, "default": 0, "help": "0: 7.jpg (ScanNet); 5: 00007.jpg"},
            "size": _SIZE,
        },
        lambda s: (
            f"wrote {s.scenes} scenes of {s.frames_per_scene} posed frames, {s.scanqa_questions} ScanQA "
            f"and {s.sqa3d_questions} SQA3D questions to {s.out}"
        ),
    ),
    "mmc4": _CotrainingSynth(
        "write_mmc4",
        "MMC4 jsonl shards and their images",
        {
            "documents": {"type": int, "default": 8},
            "shards": {"type": int, "default": 2},
            "max_images": {"type": int, "default": 8},
            "size": _SIZE,
        },
        lambda s: (
            f"wrote {s.documents} documents, {s.images} images in {len(s.shard_names)} shards to {s.out}"
        ),
    ),
    "mixture": _CotrainingSynth(
        "write_mixture",
        "a full stage-two tree and its co-training YAML",
        {
            "episodes": {"type": int, "default": 8},
            "dagger_episodes": {"type": int, "default": 4},
            "videos": {"type": int, "default": 6},
            "scenes": {"type": int, "default": 3},
            "documents": {"type": int, "default": 8},
            "shards": {"type": int, "default": 2},
            "image_size": _SIZE,
        },
        lambda s: (
            f"wrote stage-two data to {s.out}: {s.navigation.episodes}+{s.dagger.episodes} episodes, "
            f"{s.qa.videos} QA videos, {s.scanqa.scenes} scenes, {s.mmc4.documents} MMC4 documents; "
            f"{s.yaml_path}\ntrain with: {s.command_line()}"
        ),
        exclusive={
            "relative_to": {"help": "write paths relative to this folder (where training runs)"},
            "url_prefix": {"help": "write paths under this URL (e.g. s3://bucket/prefix)"},
        },
    ),
}


def _option(name: str) -> str:
    """`--frames-per-scene` for the writer parameter `frames_per_scene` (argparse maps it back)."""
    return "--" + name.replace("_", "-")


def _synth_cotraining(args) -> None:
    import streamvln_model.synthetic as synthetic

    command = _COTRAINING_SYNTH[args.what]
    values = {name: getattr(args, name) for name in (*command.options, *command.exclusive)}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    write = getattr(synthetic, command.writer)
    print(command.report(write(Path(args.out), seed=args.seed, overwrite=args.overwrite, **values)))


def _add_cotraining_synth(synth) -> None:
    """`synth qa|scanqa|mmc4|mixture`, one parser per entry of `_COTRAINING_SYNTH`."""
    for what, command in _COTRAINING_SYNTH.items():
        parser = synth.add_parser(what, help=command.help)
        parser.add_argument("out")
        for name, settings in command.options.items():
            parser.add_argument(_option(name), **settings)
        if command.exclusive:
            group = parser.add_mutually_exclusive_group()
            for name, settings in command.exclusive.items():
                group.add_argument(_option(name), **settings)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--overwrite", action="store_true", help="replace OUT as a whole")
        parser.set_defaults(run=_synth_cotraining)


def _synth_checkpoint(args) -> None:
    from streamvln_model.synthetic.checkpoint import write_checkpoint

    out = write_checkpoint(args.out, args.preset, args.seed, args.overwrite)
    print(f"wrote {args.preset} checkpoint to {out}")


def _data_preview(args) -> None:
    from flows.presets import command_arguments
    from streamvln_model.config.sample_shape import SampleShape
    from streamvln_model.data.preview import plan_record, preview_plans, render_plan

    named = {name: getattr(args, name) for name in ("video_folder", *SampleShape.names())}
    flags = [a for k, v in named.items() if v is not None for a in (f"--{k}", str(v))]
    arguments = command_arguments(args.config, flags)
    video_folder = arguments.data.video_folder
    if not video_folder:
        raise ValueError("--video_folder: give the trajectory folders, or a preset that names them")
    model = arguments.model
    tokenizer_path = args.tokenizer or model.tokenizer_name_or_path
    if not tokenizer_path and "model_name_or_path" in arguments.given:
        tokenizer_path = model.model_name_or_path
    if not tokenizer_path:
        raise ValueError("--tokenizer: give the tokenizer folder (e.g. the checkpoint), or a preset with one")
    shape = SampleShape.from_arguments(arguments.data, arguments.given)
    tokenizer, plans = preview_plans(video_folder, tokenizer_path, args.num, shape)
    for plan in plans:
        print(
            json.dumps(plan_record(plan), ensure_ascii=False)
            if args.json
            else render_plan(tokenizer, plan) + "\n"
        )


def _data_check(args) -> None:
    from flows.presets import command_arguments
    from streamvln_model.data.validation.check import DataSettings, check_data
    from streamvln_model.data.validation.errors import DataValidationError
    from streamvln_model.data.validation.report import ValidationReport
    from streamvln_model.model.tokenizer import cache_root

    config, flags = _config_and_flags(args.flags)
    args.config = config  # a YAML error names it
    if config and Path(config).is_dir():
        raise ValueError(f"{config}: a folder, not a preset. Fix: --video_folder {config}")
    arguments = command_arguments(config, flags)
    if not arguments.data.video_folder:
        raise ValueError("--video_folder: give the trajectory folders, or a preset that names them")
    # A shape flag neither the preset nor the command line names is StreamVLN's (SampleShape).
    settings = DataSettings.of(
        vars(arguments.data), vars(arguments.training), _frame_tokens(arguments), given=arguments.given
    )
    try:
        check = check_data(
            settings, check_cache=cache_root() / "data" / "media-checks.sqlite", workers=args.workers
        )
    except DataValidationError as err:
        if err.report:
            print(json.dumps(err.report) if args.json else ValidationReport(**err.report).markdown())
        raise
    print(json.dumps(check.report.to_dict()) if args.json else check.report.markdown())


def _config_and_flags(rest: list[str]) -> tuple[str | None, list[str]]:
    """(preset, training flags) of `data check [CONFIG.yaml] [--flag value ...]`.

    The preset is the first word when it is no flag (a flag's value always follows its flag);
    argparse cannot take it as a positional here, as it would take a flag's value for it.
    """
    if rest and not rest[0].startswith("-"):
        return rest[0], rest[1:]
    return None, rest


def _frame_tokens(arguments) -> int | None:
    """Visual tokens per frame of the run's checkpoint (for the token estimate), when it is local."""
    from streamvln_model.model.configuration import StreamVLNConfig
    from streamvln_model.model.vision import frame_tokens

    checkpoint = arguments.model.model_name_or_path
    if not checkpoint or not (Path(checkpoint) / "config.json").is_file():
        return None
    return frame_tokens(StreamVLNConfig.from_pretrained(checkpoint))


def _demo(args) -> None:
    from flows.demo import run_demo

    result = run_demo(Path(args.workdir), episodes=args.episodes, nproc=args.nproc, stage=args.stage)
    if not args.json:
        print(
            f"\nStreamVLN demo finished in {result['workdir']}\n"
            f"  loss: {result['first_loss']:.3f} -> {result['last_loss']:.3f} over {result['steps']} steps\n"
            f"  MLflow run: {result['mlflow_run_id']}  (browse: {result['mlflow_ui']})\n"
            f"  registered model: {result['model_uri']} (version {result['model_version']})\n"
            f"  trained folder: {result['output_dir']}\n"
            f"  Prefect flow run: {result['flow_run_id']}  (browse: {result['prefect_ui']})"
        )
    else:
        print(json.dumps(result))


def _train(args) -> None:
    from flows.presets import argv_flags, load_preset, with_flags
    from streamvln_model.config.errors import InputError
    from streamvln_model.config.preflight import PreflightError, preflight
    from tasks.parameters import LaunchConfig, TrackingConfig, TrainRequest, request_arguments

    config, problems = load_preset(args.config)
    request_values = config.get("request", {})
    if args.flags:  # published flags after CONFIG win over the preset's
        request_values = with_flags(request_values, argv_flags(args.flags))
    request = TrainRequest(**request_values)
    launch = LaunchConfig(**config.get("launch", {}))
    tracking = TrackingConfig(**config.get("tracking", {}))
    # Every preset, argument, machine, checkpoint and tokenizer problem at once, in seconds, before
    # the embedded Prefect server starts; the flow's stages run the same checks for UI runs.
    try:
        preflight(
            request_arguments(request),
            launch.device,
            launch.nproc_per_node,
            world_size=launch.nproc_per_node * launch.nnodes,
            deepspeed=launch.deepspeed,
        )
    except InputError as err:  # unknown flags, or what preflight found
        problems += err.problems
    if problems:
        raise PreflightError(problems)

    from flows.train import streamvln_train

    result = streamvln_train(
        **request.groups(),
        launch=launch,
        tracking=tracking,
        plan_only=args.plan_only,
        resume_from=args.resume_from,
    )
    print(result.model_dump_json(indent=None if args.json else 2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvln", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a refused input or failed training"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic data or checkpoints").add_subparsers(
        dest="what", required=True
    )
    traj = synth.add_parser("trajectories", help="episodes in the published layout, learnable from pixels")
    traj.add_argument("out")
    traj.add_argument("--episodes", type=int, required=True)
    traj.add_argument("--min-steps", type=int, default=20)
    traj.add_argument("--max-steps", type=int, default=90)
    traj.add_argument("--image-size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    traj.add_argument("--seed", type=int, default=0)
    traj.add_argument("--num-future-steps", type=int, help="default: StreamVLN's (config/sample_shape.py)")
    traj.add_argument("--overwrite", action="store_true")
    traj.set_defaults(run=_synth_trajectories)
    _add_cotraining_synth(synth)
    ckpt = synth.add_parser("checkpoint", help="random-init LLaVA-layout checkpoint with the Qwen2 tokenizer")
    ckpt.add_argument("out")
    ckpt.add_argument("--preset", default="tiny")
    ckpt.add_argument("--seed", type=int, default=0)
    ckpt.add_argument("--overwrite", action="store_true")
    ckpt.set_defaults(run=_synth_checkpoint)

    data = commands.add_parser("data", help="inspect training data").add_subparsers(
        dest="what", required=True
    )
    preview = data.add_parser(
        "preview",
        help="show what the model sees for a few samples",
        description="Flags left unset come from CONFIG (a preset), else StreamVLN's sample shape.",
    )
    preview.add_argument("config", nargs="?", help="a preset (configs/*.yaml); the flags below win over it")
    preview.add_argument("--video_folder", help="default: the preset's")
    preview.add_argument("--tokenizer", help="tokenizer folder (default: the preset's checkpoint)")
    preview.add_argument("--num", type=int, default=3, help="samples to show; 0 = all")
    preview.add_argument("--json", action="store_true", help="one JSON object per line")
    for name in SHAPE_FLAGS:
        preview.add_argument(f"--{name}", type=int, help="default: the preset's, else StreamVLN's")
    preview.set_defaults(run=_data_preview)
    check = data.add_parser(
        "check",
        help="check every sample (annotations, text, paths, every image and video) and print the report",
        usage="streamvln data check [CONFIG.yaml] [--json] [--workers N] [--<training flag> VALUE ...]",
        description="Takes a preset (configs/*.yaml) and/or the training flags as the worker does "
        "(e.g. --video_folder, --data_path, --multi_task_training True, --max_invalid_fraction, "
        "--model_name_or_path for token estimates); a flag wins over the preset. Sample-shape flags "
        "neither names are StreamVLN's (streamvln_model/config/sample_shape.py). "
        "Exit 2 when the data is refused.",
    )
    check.add_argument("--json", action="store_true", help="the report as one JSON object")
    check.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    check.set_defaults(run=_data_check)

    run = commands.add_parser(
        "train",
        help="run the streamvln-train flow from a YAML config (see configs/)",
        usage="streamvln train CONFIG.yaml [--plan-only] [--resume-from R] [--json] [--<flag> VALUE ...]",
        description="Published training flags after CONFIG (e.g. --video_folder s3://...) win over "
        "the preset's.",
    )
    run.add_argument("config")
    run.add_argument("--plan-only", action="store_true", help="validate and plan; do not train")
    run.add_argument(
        "--resume-from",
        help="continue a run folder under output_dir: its name or path, a flow-run or MLflow run id, "
        "or 'latest'",
    )
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=_train, embedded=True)

    demo = commands.add_parser("demo", help="train a tiny model on synthetic data through the real flow")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--json", action="store_true", help="last line: one JSON object with the results")
    demo.add_argument("--episodes", type=int, default=16)
    demo.add_argument("--nproc", type=int, default=2)
    demo.add_argument(
        "--stage", choices=("one", "two"), default="one", help="two: co-train on navigation, QA, ScanQA, MMC4"
    )
    demo.set_defaults(run=_demo)

    from flows.cli_deploy import add_deploy_commands

    add_deploy_commands(commands)
    from flows.cli_registry import add_commands as add_registry_commands

    add_registry_commands(commands)  # pull, promote
    return parser


def _loaded_class(module: str, name: str) -> type | None:
    """`module.name` if that module is already imported, else None.

    An exception of a class from a module nobody imported cannot have been raised, so checking
    this way costs nothing for commands that never load Prefect or the training stage.
    """
    return getattr(sys.modules.get(module), name, None)


def _original(err: BaseException) -> BaseException:
    """The exception behind Prefect's wrappers (a Prefect exception raised `from` the original).

    Calling a failed flow re-raises the failing task's own exception; this only matters where
    Prefect wraps one (e.g. a crashed run), so the message shown is the original one.
    """
    seen: set[int] = set()
    while type(err).__module__.startswith("prefect") and err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return err


def _refused_input(err: BaseException, args: argparse.Namespace) -> str | None:
    """The message for an exception that means bad input, or None for anything else (a bug).

    ValueError covers pydantic's ValidationError and every InputError (FlagError,
    DataValidationError, PreflightError: streamvln_model/config/errors.py); OSError covers
    FileNotFoundError and FileExistsError; Prefect refuses flow parameters of the wrong type
    with its own exceptions; a config that is not YAML is named with the line it breaks on.
    """
    import yaml

    if isinstance(err, yaml.YAMLError):
        return _yaml_message(err, getattr(args, "config", None))
    prefect_refusals = tuple(
        cls
        for name in ("ParameterTypeError", "ParameterBindError")
        if (cls := _loaded_class("prefect.exceptions", name)) is not None
    )
    if isinstance(err, (ValueError, OSError, *prefect_refusals)):
        return str(err)
    return None


def _yaml_message(err: Any, source: str | None) -> str:
    """`FILE:LINE:COLUMN: invalid YAML: <problem>`; PyYAML itself only knows "<unicode string>"."""
    mark = getattr(err, "problem_mark", None)
    where = source or (mark.name if mark else "config")
    if mark is not None:
        where += f":{mark.line + 1}:{mark.column + 1}"
    problem = ", ".join(
        str(part) for part in (getattr(err, "context", None), getattr(err, "problem", None)) if part
    )
    return f"{where}: invalid YAML: {problem or err}"


def _report(err: BaseException, args: argparse.Namespace) -> int | None:
    """Print what went wrong in the CLI's voice and return the exit code; None: not ours to explain."""
    err = _original(err)
    command = " ".join(["streamvln", args.command, *([args.what] if getattr(args, "what", None) else [])])
    training_failed = _loaded_class("tasks.training", "TrainingFailed")
    if training_failed is not None and isinstance(err, training_failed):
        print(
            f"{command}: {err.summary}; last lines:",
            *err.tail,
            f"full log: {err.log_path}",
            sep="\n",
            file=sys.stderr,
        )
        return EXIT_FAILED
    message = _refused_input(err, args)
    if message is None:
        return None
    print(f"{command}: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if getattr(args, "run", None) in (_data_check, _train):  # published flags, in order
        args.flags = rest
    elif rest:
        build_parser().parse_args(argv)  # argparse's own error for unknown arguments
    if getattr(args, "embedded", False):  # runs the flow: embedded-server settings, before Prefect loads
        from flows.demo import configure_embedded

        configure_embedded()
    try:
        args.run(args)
    except Exception as err:
        code = None if args.debug else _report(err, args)
        if code is None:  # --debug, or an error that is not about the input: show the traceback
            raise
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
