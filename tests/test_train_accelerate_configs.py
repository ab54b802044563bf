"""The shipped accelerate configs (configs/accelerate/*.yaml) go through accelerate's own loader and its
launcher's own parsing, as `accelerate launch --config_file X -m engine train ...` reads them, down to the
environment the training processes would get. DeepSpeed itself is not needed for that; multi_gpu.yaml is
also launched for real by tests/test_train_ranks.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
SHIPPED = {
    "multi_gpu": DistributedType.MULTI_GPU,
    "deepspeed_zero2": DistributedType.DEEPSPEED,
    "deepspeed_zero3": DistributedType.DEEPSPEED,
    "fsdp": DistributedType.FSDP,
}


def launcher_env(path: Path) -> tuple[dict, dict[str, str]]:
    """(the launcher's args, the environment of the processes it would start) for this config."""
    argv = ["--config_file", str(path), "--main_process_port", "0", "-m", "engine", "train", "sft", "x.toml"]
    args = launch_command_parser().parse_args(argv)
    known = set(vars(args))
    args, defaults, _ = _validate_launch_command(args)
    # a nested key the launcher has no option for would be set on args silently and then ignored
    nested = [
        *defaults.deepspeed_config,
        *(k if k.startswith("fsdp") else f"fsdp_{k}" for k in defaults.fsdp_config),
    ]
    assert [key for key in nested if key not in known] == [], path.name
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return vars(args), prepare_deepspeed_cmd_env(args)[1]
    return vars(args), prepare_multi_gpu_env(args)


def test_exactly_the_documented_configs_ship():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_config_loads_and_launches_eight_processes(name):
    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == SHIPPED[name]
    assert (config.num_processes, config.num_machines, config.use_cpu) == (8, 1, False)
    # precision is the train spec's (bf16 on a GPU by TRL's default), not the launcher's
    assert config.mixed_precision == "no"
    args, env = launcher_env(path)
    assert args["nproc_per_node"] == "8" and env["ACCELERATE_MIXED_PRECISION"] == "no"


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", "2"), ("deepspeed_zero3", "3")])
def test_deepspeed_configs_take_batch_settings_from_the_train_spec(name, stage):
    _, env = launcher_env(CONFIGS / f"{name}.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
    # unset, DeepSpeed's gradient accumulation and clipping are "auto": TrainingArguments fills them in;
    # a value in the YAML that differed from the spec's would stop the run with a mismatch
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
    assert "ACCELERATE_GRADIENT_CLIPPING" not in env
    if stage == "3":  # sharded loading, and one gathered 16-bit adapter/model file on save
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_fsdp_config_builds_accelerates_plugin_with_full_state_dict_saves(monkeypatch):
    _, env = launcher_env(CONFIGS / "fsdp.yaml")
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what Accelerator builds from that environment
    assert plugin.fsdp_version == 2
    # a full state dict: Trainer.save_model writes the adapter on the main process (sharded: nothing)
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
