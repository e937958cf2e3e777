"""Resume after SIGKILL is exact, and a 2-process torchrun (gloo, CPU) run agrees across ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from retain.training.recipe import load_recipe
from retain.training.run import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(make_recipe, tmp_path):
    # LoRAMoE with dropout, LBC and grad accumulation: resume must restore weights, optimizer,
    # scheduler, data position and RNG (dropout masks) to reproduce the run bit for bit.
    path = make_recipe(method="loramoe", write=True,
                       train={"max_steps": 7, "grad_accum": 2, "save_every": 3, "keep_checkpoints": 2})
    recipe = load_recipe(path)
    straight = train(load_recipe(path, [f"train.output_dir={tmp_path / 'straight'}"]))

    # The killed run SIGKILLs itself just before logging step 5: checkpoint 3 exists, step 4 was logged.
    script = textwrap.dedent(f"""
        import os, signal, sys
        from retain.utils.startup import import_ml_stack
        import_ml_stack()
        import retain.training.trainer as T
        orig = T.append_jsonl
        def append(path, row):
            if row["step"] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            orig(path, row)
        T.append_jsonl = append
        from retain.cli import main
        sys.exit(main(["train", {str(path)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    out = tmp_path / "run"
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["checkpoint-3"]
    assert (out / "checkpoints" / "checkpoint-3" / "retain_state.json").is_file()
    assert [r["step"] for r in _log(out / "train_log.jsonl")] == [1, 2, 3, 4]
    assert not (out / "model").exists() and not (out / "train_result.json").exists()

    resumed = train(recipe, resume=True)
    assert resumed.steps == 7
    rows = _log(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    ref = _log(tmp_path / "straight" / "train_log.jsonl")
    for key in ("lm_loss", "lbc_loss", "lr", "tokens", "grad_norm"):
        assert [r[key] for r in rows] == [r[key] for r in ref], key
    a, b = _trainable(straight.model), _trainable(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.final_loss == straight.final_loss == pytest.approx(sum(r["lm_loss"] for r in ref) / len(ref))


@pytest.mark.slow
def test_torchrun_two_processes_agree_and_match_single_process(make_recipe, tmp_path):
    # Global batch 4 either way: 2 ranks x 2 sequences vs 1 process x 4 sequences.
    path = make_recipe(method="lora", write=True, train={"max_steps": 4, "batch_size": 2, "save_every": 2,
                                                         "keep_final_checkpoint": True})
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        from retain.utils.startup import import_ml_stack
        import_ml_stack()  # what a script may do first: the stack imported with the collector paused
        import hashlib, os, sys, torch
        from retain.training.recipe import load_recipe
        from retain.training.run import train
        res = train(load_recipe({str(path)!r}))
        params = [p.detach() for _, p in sorted(res.model.named_parameters()) if p.requires_grad]
        torch.save(params, os.path.join({str(tmp_path)!r}, "rank%s.pt" % os.environ["RANK"]))
    """), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0) == len(r1) > 0 and all(torch.equal(a, b) for a, b in zip(r0, r1))
    result = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert result["steps"] == 4 and len(_log(tmp_path / "run" / "train_log.jsonl")) == 4
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-4"  # the final step's, kept (keep_final_checkpoint)
    rngs = [torch.load(ckpt / f"rng_state_{r}.pth", weights_only=False) for r in (0, 1)]
    assert not torch.equal(rngs[0]["cpu"], rngs[1]["cpu"])  # one dropout stream per rank (files this test wrote)

    single = load_recipe(path, [f"train.output_dir={tmp_path / 'single'}", "train.batch_size=4"])
    ref = [p.detach() for _, p in sorted(train(single).model.named_parameters()) if p.requires_grad]
    for a, b in zip(r0, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    ddp_rows = _log(tmp_path / "run" / "train_log.jsonl")
    one_rows = _log(tmp_path / "single" / "train_log.jsonl")
    assert [r["lm_loss"] for r in ddp_rows] == pytest.approx([r["lm_loss"] for r in one_rows], rel=1e-5)
