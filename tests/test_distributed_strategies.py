"""DeepSpeed ZeRO-2, ZeRO-3 and FSDP train through the flow, on 2 gloo ranks on the CPU.

Each strategy trains the tiny model 4 steps through the real `streamvln-train` flow (Prefect
planning, torchrun workers, an `mlflow server`, registration) from the same checkpoint, data and
seed as a plain DDP run, which is the reference:

* the step-1 loss equals DDP's: the strategy must load the same weights and feed the same batches;
* the saved model's weights equal DDP's trained weights: the strategy must apply the same
  freezing (the tower is frozen here), the same per-module learning rates (the projector has its
  own here) and gather the full weights for the save, not a shard;
* the worker's own reload check ran (its log line) and the registered MLflow model loads.

Kill-and-resume under ZeRO-2: a run stopped once `checkpoint-2` exists leaves exactly that folder
behind, so the resumed run starts from a copy of the uninterrupted run's `checkpoint-2` in a
fresh output_dir; it must end at step 4 with the uninterrupted run's losses for steps 3 and 4,
which needs the ZeRO-partitioned optimizer state, the scheduler, the RNG and the data position
all restored (step 3's loss depends on the restored weights and batch, step 4's on the optimizer
and learning rate too).

Cost on 2 CPU cores: ~30 s per run (plus, once per machine, ~60 s for DeepSpeed's shm-comm JIT
build, cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from streamvln_model import StreamVLNForCausalLM
from tests.conftest import REPO_ROOT
from tests.helpers import mlflow_tracking_at, train_flow

ZERO2 = str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")
ZERO3 = str(REPO_ROOT / "configs" / "deepspeed" / "zero3.json")
FSDP_CONFIG = str(REPO_ROOT / "configs" / "fsdp.json")
STEPS = 4

# The step-1 loss is computed before any update, from the checkpoint's weights and the same two
# batches (the same sampler seed and rank split under every strategy), with the same fp32 CPU
# kernels: ZeRO and FSDP change how weights are stored between steps and how gradients are
# reduced, both after this loss. What may differ is the order of the cross-rank average of the
# logged loss, ~1 fp32 ulp at a loss of ~12 (1e-6). Measured: equal to the last bit. A different
# init or batch moves it by > 1e-2.
LOSS_TOLERANCE = 1e-5
# Trained weights after 4 steps: ZeRO's reduce-scatter and FSDP's sharded reduction sum the
# ranks' fp32 gradients in a different order from DDP's all-reduce (~1e-7 relative); Adam's eps
# (1e-8) bounds how far that can move an update even for a near-zero gradient. Measured: 4.0e-7
# (ZeRO-2), 2.1e-6 (ZeRO-3), 1.3e-7 (FSDP), while training moves weights by 2.0e-2 and a lost
# per-module learning rate (projector 1e-2 instead of 3e-3) would move them by > 5e-3.
WEIGHT_TOLERANCE = 1e-4
RELOAD_CHECK = re.compile(r"reload check passed for (\S+) \(.*largest logit difference (\S+)\)")


@dataclass(frozen=True)
class Run:
    """One flow run: its result and the worker's log."""

    result: object  # flows.train.TrainFlowResult
    output_dir: Path
    log: str

    def losses(self) -> dict[int, float]:
        """Per-step training loss as the MLflow run recorded it (rank 0's callback)."""
        client = mlflow.MlflowClient()
        return {m.step: m.value for m in client.get_metric_history(self.result.mlflow_run_id, "loss")}

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.output_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def flow_env(prefect_harness, mlflow_server, tmp_path_factory) -> Iterator[Path]:
    """The module's runs track into the session's `mlflow server`; one plan cache for all of them
    (the data index is built once). Restores the tracking URI for the modules after this one."""
    with mlflow_tracking_at(mlflow_server.uri):
        yield tmp_path_factory.mktemp("strategy_plans")


def run_flow(
    name: str,
    output_dir: Path,
    plan_root: Path,
    checkpoint: Path,
    data: Path,
    deepspeed: str | None = None,
    resume_from: str | None = None,
    **fields,
) -> Run:
    """Train STEPS steps on 2 CPU ranks through the flow. The tower is frozen and the projector has
    its own learning rate, so freezing and the per-module groups are part of what must match."""
    result = train_flow(
        model_name_or_path=str(checkpoint),
        video_folder=str(data),
        output_dir=str(output_dir),
        mm_tunable_parts="mm_mlp_adapter,mm_language_model",
        mm_projector_lr=1e-2,
        max_steps=STEPS,
        logging_steps=1,
        **{"save_strategy": "no", **fields},
        launch={"nproc_per_node": 2, "deepspeed": deepspeed},
        tracking=("strategies", f"strategies-{name}"),
        plan_root=plan_root,
        resume_from=resume_from,
    )
    run_dir = Path(result.output_dir)  # this flow run's folder under output_dir
    return Run(result=result, output_dir=run_dir, log=(run_dir / "train.log").read_text())


@pytest.fixture(scope="module")
def ddp_run(flow_env, tiny_checkpoint, synthetic_data, tmp_path_factory) -> Run:
    return run_flow("ddp", tmp_path_factory.mktemp("ddp") / "out", flow_env, tiny_checkpoint, synthetic_data)


@pytest.fixture(scope="module")
def zero2_run(flow_env, tiny_checkpoint, synthetic_data, tmp_path_factory) -> Run:
    """Uninterrupted ZeRO-2 run that also leaves checkpoint-2 (and -4) for the resume test."""
    out = tmp_path_factory.mktemp("zero2") / "out"
    return run_flow(
        "zero2", out, flow_env, tiny_checkpoint, synthetic_data, ZERO2, save_strategy="steps", save_steps=2
    )


def trained_like_ddp(run: Run, ddp: Run, strategy: str, init: Path) -> None:
    """The checks every strategy shares; `strategy` is the worker's "sharding:" wording."""
    assert run.result.steps == STEPS and run.result.world_size == 2
    assert f"sharding: {strategy} over 2 rank(s)" in run.log
    # Step 1: computed from the checkpoint's weights on the same batches as DDP's.
    assert abs(run.losses()[1] - ddp.losses()[1]) <= LOSS_TOLERANCE, (run.losses(), ddp.losses())
    # Parameter counts come from full sizes even where a rank holds a shard (ZeRO-3).
    counts = re.search(r"parameters: total \d+, trainable \d+", run.log)
    assert counts and counts.group(0) in ddp.log
    # The worker reloaded the saved folder and compared logits with the trained model (on every
    # rank's shards under ZeRO-3/FSDP): equal, since both ran on this CPU.
    checks = RELOAD_CHECK.findall(run.log)
    assert [(Path(folder), float(diff)) for folder, diff in checks] == [(run.output_dir, 0.0)], checks
    # The saved weights are the trained ones: equal to DDP's, away from the init, tower untouched.
    saved, reference, initial = run.weights(), ddp.weights(), load_file(str(init / "model.safetensors"))
    assert saved.keys() == reference.keys()
    worst = max(float((saved[k] - reference[k]).abs().max()) for k in saved)
    assert worst <= WEIGHT_TOLERANCE, worst
    moved = {k: float((saved[k] - initial[k]).abs().max()) for k in saved}
    assert max(moved[k] for k in saved if "mm_projector" in k) > 10 * WEIGHT_TOLERANCE
    assert max(moved[k] for k in saved if "vision_tower" not in k) > 10 * WEIGHT_TOLERANCE
    assert all(moved[k] == 0.0 for k in saved if "vision_tower" in k)  # frozen by mm_tunable_parts
    model = StreamVLNForCausalLM.from_pretrained(run.output_dir)
    assert model.config.use_cache is True


def test_zero2_trains_like_ddp_and_saves_a_full_model(zero2_run, ddp_run, tiny_checkpoint):
    trained_like_ddp(zero2_run, ddp_run, "DeepSpeed ZeRO-2", tiny_checkpoint)
    assert (zero2_run.output_dir / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own state


def test_zero3_partitions_at_load_trains_like_ddp_and_saves_a_full_model(
    flow_env, ddp_run, tiny_checkpoint, synthetic_data, tmp_path
):
    run = run_flow("zero3", tmp_path / "out", flow_env, tiny_checkpoint, synthetic_data, ZERO3)
    trained_like_ddp(run, ddp_run, "DeepSpeed ZeRO-3", tiny_checkpoint)
    # The registered version is this run's folder and loads as the pyfunc flavour.
    assert run.result.model_uri == "models:/strategies-zero3@candidate"
    assert mlflow.pyfunc.load_model(run.result.model_uri) is not None


def test_fsdp_shards_by_layer_trains_like_ddp_and_saves_a_full_model(
    flow_env, ddp_run, tiny_checkpoint, synthetic_data, tmp_path
):
    run = run_flow(
        "fsdp",
        tmp_path / "out",
        flow_env,
        tiny_checkpoint,
        synthetic_data,
        extra_args={"fsdp": True, "fsdp_config": FSDP_CONFIG},
    )
    trained_like_ddp(run, ddp_run, "FSDP2", tiny_checkpoint)
    units = re.search(r"sharding: FSDP2 over 2 rank\(s\), (\d+) sharded modules", run.log)
    assert units and int(units.group(1)) > 1  # decoder/encoder layers each, plus the root


def test_zero2_run_stopped_after_checkpoint_2_resumes_to_the_same_losses(
    flow_env, zero2_run, tiny_checkpoint, synthetic_data, tmp_path
):
    out = tmp_path / "out"
    stopped = out / "stopped"
    stopped.mkdir(parents=True)
    # what the stopped run left
    shutil.copytree(zero2_run.output_dir / "checkpoint-2", stopped / "checkpoint-2")
    resumed = run_flow(
        "zero2-resumed",
        out,
        flow_env,
        tiny_checkpoint,
        synthetic_data,
        ZERO2,
        resume_from="stopped",
        save_strategy="steps",
        save_steps=2,
    )
    out = stopped
    assert f"resuming from {out / 'checkpoint-2'}" in resumed.log
    assert resumed.result.steps == STEPS
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    losses, reference = resumed.losses(), zero2_run.losses()
    assert sorted(losses) == [3, 4]  # steps 1-2 were not trained again
    # Same reasoning as for step 1: restored weights, batches, optimizer and schedule reproduce
    # the uninterrupted run's computation step for step (measured: equal to the last bit).
    for step in (3, 4):
        assert abs(losses[step] - reference[step]) <= LOSS_TOLERANCE, (losses, reference)
    # And it ends with the uninterrupted run's model (measured: equal to the last bit).
    resumed_weights, reference_weights = resumed.weights(), zero2_run.weights()
    worst = max(float((resumed_weights[k] - reference_weights[k]).abs().max()) for k in reference_weights)
    assert worst <= WEIGHT_TOLERANCE, worst


# --- Refused combinations: before anything loads ------------------------------------------------
def _arguments(tmp_path: Path, checkpoint: Path, data: Path, **flags):
    from streamvln_model.config.arguments import resolve_flags

    return resolve_flags(
        {
            "model_name_or_path": str(checkpoint),
            "video_folder": str(data),
            "output_dir": str(tmp_path / "out"),
            "version": "qwen_1_5",
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2,
            "mm_use_im_patch_token": False,
            "num_history": 8,
            "use_cpu": True,
            **flags,
        }
    )


def test_preflight_refuses_deepspeed_with_fsdp_and_configs_that_cannot_save(
    tiny_checkpoint, synthetic_data, tmp_path
):
    from streamvln_model.config.errors import FlagError
    from streamvln_model.config.preflight import argument_problems, machine_plan
    from streamvln_model.config.strategies import strategy_problems

    both = _arguments(tmp_path, tiny_checkpoint, synthetic_data, deepspeed=ZERO2, fsdp=True)
    problems = machine_plan(both, "cpu", 2).problems
    assert any("--deepspeed and --fsdp" in p for p in problems), problems

    # A missing file: the one resolver already refuses it, naming it (before preflight runs) ...
    with pytest.raises(FlagError, match=r"nope\.json"):
        _arguments(tmp_path, tiny_checkpoint, synthetic_data, deepspeed=str(tmp_path / "nope.json"))
    # ... and the flow's environment stage, given it as LaunchConfig.deepspeed, says why.
    launch_side = _arguments(tmp_path, tiny_checkpoint, synthetic_data)
    launch_side.training.deepspeed = str(tmp_path / "nope.json")
    assert "nope.json: unreadable DeepSpeed config" in strategy_problems(launch_side.training)[0]

    no_gather = json.loads(Path(ZERO3).read_text())
    del no_gather["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    (tmp_path / "z3.json").write_text(json.dumps(no_gather))
    z3 = _arguments(tmp_path, tiny_checkpoint, synthetic_data, deepspeed=str(tmp_path / "z3.json"))
    assert any("stage3_gather_16bit_weights_on_model_save" in p for p in argument_problems(z3))

    with_optimizer = {**json.loads(Path(ZERO2).read_text()), "optimizer": {"type": "AdamW"}}
    (tmp_path / "z2opt.json").write_text(json.dumps(with_optimizer))
    flags = {"deepspeed": str(tmp_path / "z2opt.json"), "mm_vision_tower_lr": 1e-5}
    opt = _arguments(tmp_path, tiny_checkpoint, synthetic_data, **flags)
    assert any('"optimizer" section' in p and "--mm_vision_tower_lr" in p for p in argument_problems(opt))

    sharded = {"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}
    fsdp = _arguments(tmp_path, tiny_checkpoint, synthetic_data, fsdp=True, fsdp_config=sharded)
    assert any("state_dict_type=SHARDED_STATE_DICT" in p for p in argument_problems(fsdp))

    for fine in (ZERO2, ZERO3, str(REPO_ROOT / "configs" / "deepspeed" / "zero3_offload.json")):
        arguments = _arguments(
            tmp_path, tiny_checkpoint, synthetic_data, deepspeed=fine, mm_projector_lr=1e-3
        )
        assert argument_problems(arguments) == [] and machine_plan(arguments, "cpu", 2).problems == []


@pytest.mark.parametrize("stage", [4, "three", None, True])
def test_a_bad_zero_stage_gets_one_answer_from_preflight_and_the_memory_plan(
    stage, tiny_checkpoint, synthetic_data, tmp_path
):
    """One reader (config.strategies.read_strategy): preflight's strategy check, the memory plan
    (flags or the launch's config) and the log name all read the same stage the same way."""
    from streamvln_model.config.preflight import PreflightError, argument_problems, preflight
    from streamvln_model.config.strategies import StrategyError, read_strategy, strategy_problems
    from streamvln_model.training.memory import memory_problems, strategy_of

    config = {**json.loads(Path(ZERO2).read_text())}
    config["zero_optimization"] = {**config["zero_optimization"], "stage": stage}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    flags = {"deepspeed": str(tmp_path / "bad.json"), "gpu_memory_gb": 80}
    arguments = _arguments(tmp_path, tiny_checkpoint, synthetic_data, **flags)

    strategy = read_strategy(arguments.training)
    assert len(strategy.problems) == 1 and f"zero_optimization.stage is {stage!r}" in strategy.problems[0]
    from_preflight = [p for p in argument_problems(arguments) if "zero_optimization.stage" in p]
    assert from_preflight == list(strategy.problems) == strategy_problems(arguments.training)
    assert memory_problems(arguments, 2) == from_preflight  # not "cannot plan the memory"
    with pytest.raises(StrategyError) as refused:
        strategy_of(arguments.training)
    assert refused.value.problems == from_preflight
    with pytest.raises(PreflightError) as refused:  # named once, not again by the memory check
        preflight(arguments, "cpu", 2)
    assert [p for p in refused.value.problems if "zero_optimization" in p] == from_preflight

    # The launch's config (the flow's LaunchConfig.deepspeed, a dict beside the flags): the same.
    launch_side = _arguments(tmp_path, tiny_checkpoint, synthetic_data, gpu_memory_gb=80)
    inline = strategy_problems(launch_side.training, deepspeed=config)
    assert len(inline) == 1 and "(inline config): zero_optimization.stage" in inline[0]
    assert memory_problems(launch_side, 2, deepspeed=config) == inline


def test_read_strategy_kinds(tmp_path):
    from types import SimpleNamespace

    from streamvln_model.config.strategies import read_strategy

    def training(**flags):
        return SimpleNamespace(**{"deepspeed": None, "fsdp": None, "fsdp_config": None, **flags})

    assert (read_strategy(training()).kind, read_strategy(training()).name) == ("ddp", "DDP")
    zero3 = read_strategy(training(deepspeed=str(REPO_ROOT / "configs" / "deepspeed" / "zero3_offload.json")))
    assert (zero3.kind, zero3.stage, zero3.gather_on_save, zero3.problems) == ("zero3", 3, True, ())
    assert zero3.name == "DeepSpeed ZeRO-3 (offload: optimizer, parameters)"
    assert read_strategy(training(deepspeed=ZERO2), deepspeed={"zero_optimization": {}}).kind == "zero0"
    fsdp = read_strategy(training(fsdp="shard_grad_op offload", fsdp_config={"fsdp_version": 1}))
    assert (fsdp.kind, fsdp.name, fsdp.fsdp_reshard_after_forward, fsdp.offload_params) == (
        "fsdp",
        "FSDP1",
        False,
        True,
    )
    (tmp_path / "list.json").write_text("[1]")
    listed = read_strategy(training(deepspeed=str(tmp_path / "list.json")))
    assert listed.kind == "ddp" and "a DeepSpeed config is a JSON object, not a list" in listed.problems[0]


def test_preflight_refuses_deepspeed_without_the_package(
    tiny_checkpoint, synthetic_data, tmp_path, monkeypatch
):
    from streamvln_model.config.preflight import machine_plan

    arguments = _arguments(tmp_path, tiny_checkpoint, synthetic_data, deepspeed=ZERO2)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a)
    )
    problems = machine_plan(arguments, "cpu", 2).problems
    assert "--deepspeed: the deepspeed package is not installed. Fix: pip install deepspeed" in problems


def test_the_flow_refuses_a_launch_deepspeed_config_with_fsdp_flags(
    flow_env, tiny_checkpoint, synthetic_data, tmp_path
):
    """The launch's DeepSpeed config meets the request's --fsdp in the environment stage."""
    state = train_flow(
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "out"),
        extra_args={"fsdp": True, "fsdp_config": FSDP_CONFIG},
        launch={"nproc_per_node": 2, "deepspeed": ZERO2},
        plan_root=flow_env,
        plan_only=True,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="--deepspeed and --fsdp"):
        state.result()
    assert not list((tmp_path / "out").rglob("plan.json"))
