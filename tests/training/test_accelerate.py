"""``accelerate launch`` with the shipped configs (configs/accelerate/) runs ``retain train``.

- DDP: launched for real on 2 CPU processes (gloo); it must give the weights and loss curve of one
  process with the same global batch (2 ranks x 2 sequences vs 1 process x 4).
- FSDP and DeepSpeed cannot run here: accelerate 1.15 turns an FSDP config into FSDP only on accelerator
  devices (on CPU the launch falls back to DDP), and DeepSpeed is not installed. Their tests check what the
  launcher builds from each file: the environment and the FSDP2 plugin the Trainer will receive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retain.training.recipe import load_recipe
from retain.training.run import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    # accelerate's default port (29500) may be taken by another launch on this machine: the ranks would hang.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("config,method,balance", [("ddp", "lora", "token"), ("ddp", "loramoe", "token"),
                                                   ("ddp", "lora", "type")])
def test_accelerate_launch_two_cpu_processes_matches_one(make_recipe, tmp_path, config, method, balance):
    """``type``: the loss weights come from the step's counts summed over both ranks (each rank alone would
    weigh its own share of the step)."""
    from retain.models import load_finetuned

    path = make_recipe(method=method, write=True, loramoe={"dropout": 0.0}, mixture={"loss_balance": balance},
                       train={"max_steps": 3, "batch_size": 2, "save_every": 2, "keep_final_checkpoint": True})
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "retain", "train", str(path)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    assert "2 process(es)" in proc.stderr
    ckpt = out / "checkpoints" / "checkpoint-3"  # the final step's, kept (keep_final_checkpoint)
    assert (ckpt / "retain_state.json").is_file() and (ckpt / "rng_state_1.pth").is_file()

    single = train(load_recipe(path, [f"train.output_dir={tmp_path / 'single'}", "train.batch_size=4"]))
    launched, _ = load_finetuned(out / "model")
    a = {n: p.detach() for n, p in launched.named_parameters()}
    b = {n: p.detach() for n, p in single.model.named_parameters()}
    two, one = _log(out / "train_log.jsonl"), _log(tmp_path / "single" / "train_log.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    assert a.keys() == b.keys()
    if method == "lora":
        for n in a:
            torch.testing.assert_close(a[n], b[n], atol=2e-5, rtol=1e-4)
        assert [r["lm_loss"] for r in two] == pytest.approx([r["lm_loss"] for r in one], rel=1e-5)
    else:
        # The LBC is a per-micro-batch statistic: each rank's over its 2 sequences is not the one over all 4
        # (the same under the former loop), so only the first step's LM loss is identical.
        assert two[0]["lm_loss"] == pytest.approx(one[0]["lm_loss"], rel=1e-5)
        assert all(r["lbc_loss"] is not None for r in two)
        for n in a:
            torch.testing.assert_close(a[n], b[n], atol=1e-2, rtol=0)


def _launch_args(config):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / f"{config}.yaml"), "--num_processes", "8", "-m", "retain", "train", "r.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_fsdp_config_builds_an_fsdp2_plugin(monkeypatch):
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, defaults = _launch_args("fsdp")
    assert args.use_fsdp and defaults.distributed_type.value == "FSDP" and args.num_processes == 8
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # model/ is one consolidated folder
    assert plugin.auto_wrap_policy == "transformer_based_wrap" or callable(plugin.auto_wrap_policy)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_select_their_zero_stage(stage):
    args, defaults = _launch_args(f"deepspeed_zero{stage}")
    assert args.use_deepspeed and defaults.distributed_type.value == "DEEPSPEED"
    assert defaults.deepspeed_config["zero_stage"] == stage
    assert defaults.deepspeed_config["gradient_accumulation_steps"] == "auto"  # filled from the recipe
