"""`streamvln`: synthetic data and checkpoints, data preview, the end-to-end demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _synth_trajectories(args) -> None:
    from streamvln_model.synthetic import write_trajectories

    summary = write_trajectories(
        Path(args.out), episodes=args.episodes, min_steps=args.min_steps, max_steps=args.max_steps,
        image_size=tuple(args.image_size), seed=args.seed, num_future_steps=args.num_future_steps,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {summary.episodes} episodes, {summary.frames} frames to {summary.out}")


def _synth_checkpoint(args) -> None:
    from streamvln_model.synthetic.checkpoint import write_checkpoint

    out = write_checkpoint(args.out, args.preset, args.seed, args.overwrite)
    print(f"wrote {args.preset} checkpoint to {out}")


def _data_preview(args) -> None:
    from streamvln_model.preview import PreviewSettings, plan_record, preview_plans, render_plan

    settings = PreviewSettings(args.num_frames, args.num_history, args.num_future_steps)
    tokenizer, plans = preview_plans(args.video_folder, args.tokenizer, args.num, settings)
    for plan in plans:
        print(
            json.dumps(plan_record(plan), ensure_ascii=False)
            if args.json
            else render_plan(tokenizer, plan) + "\n"
        )


def _demo(args) -> None:
    from flows.demo import run_demo

    result = run_demo(Path(args.workdir), episodes=args.episodes, nproc=args.nproc)
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
    from flows.presets import preset_parameters
    from flows.train import streamvln_train
    from tasks.parameters import LaunchConfig, RegistryConfig, TrainRequest

    config = preset_parameters(args.config)
    result = streamvln_train(
        request=TrainRequest(**config.get("request", {})),
        launch=LaunchConfig(**config.get("launch", {})),
        registry=RegistryConfig(**config.get("registry", {})),
        plan_only=args.plan_only,
    )
    print(result.model_dump_json(indent=None if args.json else 2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvln", description=__doc__)
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
    traj.add_argument("--num-future-steps", type=int, default=4)
    traj.add_argument("--overwrite", action="store_true")
    traj.set_defaults(run=_synth_trajectories)
    ckpt = synth.add_parser("checkpoint", help="random-init LLaVA-layout checkpoint with the Qwen2 tokenizer")
    ckpt.add_argument("out")
    ckpt.add_argument("--preset", default="tiny")
    ckpt.add_argument("--seed", type=int, default=0)
    ckpt.add_argument("--overwrite", action="store_true")
    ckpt.set_defaults(run=_synth_checkpoint)

    data = commands.add_parser("data", help="inspect training data").add_subparsers(
        dest="what", required=True
    )
    preview = data.add_parser("preview", help="show what the model sees for a few samples")
    preview.add_argument("--video_folder", required=True)
    preview.add_argument("--tokenizer", required=True, help="tokenizer folder (e.g. the checkpoint)")
    preview.add_argument("--num", type=int, default=3, help="samples to show; 0 = all")
    preview.add_argument("--json", action="store_true", help="one JSON object per line")
    preview.add_argument("--num_frames", type=int, default=32)
    preview.add_argument("--num_history", type=int, default=8)
    preview.add_argument("--num_future_steps", type=int, default=4)
    preview.set_defaults(run=_data_preview)

    run = commands.add_parser("train", help="run the streamvln-train flow from a YAML config (see configs/)")
    run.add_argument("config")
    run.add_argument("--plan-only", action="store_true", help="validate and plan; do not train")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=_train)

    demo = commands.add_parser("demo", help="train a tiny model on synthetic data through the real flow")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--json", action="store_true", help="last line: one JSON object with the results")
    demo.add_argument("--episodes", type=int, default=16)
    demo.add_argument("--nproc", type=int, default=2)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileExistsError, OSError) as err:  # bad input: a clear message, no traceback
        print(f"streamvln {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
