"""LoRAMoE + LBC inside TRL's real SFTTrainer and transformers' Trainer, on the tiny random Llama, offline."""

from __future__ import annotations

import random

import pytest
import torch

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.loramoe import lbc_loss, sample_types
from retain.adapters.methods import folder_kind, prepare_model
from retain.errors import RetainError
from retain.integrations.trl import LoRAMoESFTTrainer, LoRAMoETrainer, SampleTypeCollator
from retain.models import load_finetuned


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


def _rows(types=("task", "world")) -> list[dict]:
    """8 arithmetic rows of the first type, 8 world-fact rows of the second (None = no type known)."""
    rng = random.Random(0)
    rows = []
    for i in range(8):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"messages": [{"role": "user", "content": f"{a}+{b}?"},
                                  {"role": "assistant", "content": f"{a}+{b}={a + b}"}], "sample_type": types[0]})
        rows.append({"messages": [{"role": "user", "content": f"Color {i}?"},
                                  {"role": "assistant", "content": "The sky is blue."}], "sample_type": types[1]})
    return rows


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _model(path, **cfg):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path)
    return prepare_model(base, "loramoe", loramoe=LoRAMoEConfig(num_experts=2, rank=2, dropout=0.0, **cfg))


def _args(out, cls=None, **kw):
    """Training arguments for a few fast CPU steps (TRL's own defaults otherwise, gradient checkpointing on)."""
    from trl import SFTConfig

    base = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=2e-2,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    if cls is None:
        cls, base["max_length"] = SFTConfig, 64
    return cls(**{**base, **kw})


def _train_logs(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if "loss" in r]


def _adapter_weights(model) -> dict[str, torch.Tensor]:
    from retain.adapters.loramoe import adapter_state_dict

    return {k: v.clone() for k, v in adapter_state_dict(model).items()}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_llama_path, tok):
    """8 optimizer steps of 2 micro-batches of 2 with TRL's SFTTrainer."""
    out = tmp_path_factory.mktemp("sft")
    trainer = LoRAMoESFTTrainer(
        model=_model(tiny_llama_path), processing_class=tok, train_dataset=_dataset(_rows()),
        eval_dataset=_dataset(_rows()[:4]),
        args=_args(out, max_steps=8, per_device_train_batch_size=2, gradient_accumulation_steps=2),
    )
    trainer.train()
    return trainer


def test_sft_trainer_adds_the_lbc_and_logs_it_apart(sft_run):
    logs = _train_logs(sft_run)
    assert [r["step"] for r in logs] == list(range(1, 9))
    for r in logs:
        assert r["lbc_loss"] > 0  # sample types reached the layers: without them there is no LBC term
        assert r["loss"] == pytest.approx(r["lm_loss"] + r["lbc_loss"], rel=1e-5, abs=1e-6)
    assert "mean_token_accuracy" in logs[0]  # TRL's own metrics still logged
    metrics = sft_run.evaluate()  # evaluation: the LM loss; the sample-type column is dropped there
    assert metrics["eval_loss"] > 0 and not any("lbc" in k for k in metrics)


def test_sft_training_lowers_the_lm_loss(sft_run):
    logs = _train_logs(sft_run)
    first, last = logs[0]["lm_loss"], sum(r["lm_loss"] for r in logs[-2:]) / 2
    assert last < first - 0.2, [round(r["lm_loss"], 3) for r in logs]


def test_save_model_writes_retain_folder_that_reloads_identically(sft_run, tmp_path, tiny_llama_path):
    out = tmp_path / "out"
    (out / "checkpoint-1").mkdir(parents=True)  # what a run's output_dir already holds is kept
    sft_run.save_model(str(out))
    assert folder_kind(out) == "loramoe" and (out / "checkpoint-1").is_dir()
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    loaded, tok = load_finetuned(out)
    assert tok.chat_template
    trained = sft_run.model.eval()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-6, rtol=0)
        fresh = _model(tiny_llama_path)
        assert not torch.allclose(fresh.eval()(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_checkpoints_are_retain_folders_and_resume_to_the_same_weights(tmp_path, tiny_llama_path, tok):
    def run(resume=None):
        trainer = LoRAMoESFTTrainer(model=_model(tiny_llama_path), processing_class=tok,
                                    train_dataset=_dataset(_rows()),
                                    args=_args(tmp_path / "run", save_strategy="steps", save_steps=2))
        trainer.train(resume_from_checkpoint=resume)
        return _adapter_weights(trainer.model)

    full = run()
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert folder_kind(ckpt) == "loramoe" and (ckpt / "trainer_state.json").exists()
    resumed = run(resume=str(ckpt))
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0)


def test_unknown_types_give_a_zero_lbc(tmp_path, tiny_llama_path, tok):
    trainer = LoRAMoESFTTrainer(model=_model(tiny_llama_path), processing_class=tok,
                                train_dataset=_dataset(_rows(types=(None, None))), args=_args(tmp_path, max_steps=2))
    trainer.train()
    assert [r["lbc_loss"] for r in _train_logs(trainer)] == [0.0, 0.0]


def test_without_the_lbc_nothing_is_added(tmp_path, tiny_llama_path, tok):
    rows = [{"messages": r["messages"]} for r in _rows()]
    with pytest.raises(RetainError, match="no 'sample_type' column"):
        LoRAMoESFTTrainer(model=_model(tiny_llama_path), processing_class=tok, train_dataset=_dataset(rows),
                          args=_args(tmp_path))
    trainer = LoRAMoESFTTrainer(model=_model(tiny_llama_path, lbc_beta=0.0), processing_class=tok,
                                train_dataset=_dataset(rows), args=_args(tmp_path, max_steps=2))
    trainer.train()
    logs = _train_logs(trainer)
    assert all("lbc_loss" not in r and r["loss"] == pytest.approx(r["lm_loss"]) for r in logs)


def test_lora_baseline_runs_through_the_same_trainer(tmp_path, tiny_llama_path, tok):
    from transformers import AutoModelForCausalLM

    from retain.adapters.config import LoRAConfig

    model = prepare_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path), "lora", lora=LoRAConfig(r=2))
    trainer = LoRAMoESFTTrainer(model=model, processing_class=tok, train_dataset=_dataset(_rows()),
                                args=_args(tmp_path / "run", max_steps=2))
    trainer.train()
    assert all("lbc_loss" not in r for r in _train_logs(trainer))
    trainer.save_model(str(tmp_path / "out"))
    assert folder_kind(tmp_path / "out") == "lora"  # PEFT's own format


@pytest.mark.parametrize("bad, match", [({"packing": True}, "packing"),
                                        ({"activation_checkpointing_kwargs": {"use_reentrant": True}}, "reentrant")])
def test_settings_that_would_silently_lose_the_lbc_are_refused(tmp_path, tiny_llama_path, tok, bad, match):
    with pytest.raises(RetainError, match=match):
        LoRAMoESFTTrainer(model=_model(tiny_llama_path), processing_class=tok, train_dataset=_dataset(_rows()),
                          args=_args(tmp_path, **bad))


def _features(tok):
    from retain.data.collate import encode_examples
    from retain.data.types import as_sample_type

    rows = [{**r, "sample_type": as_sample_type(r["sample_type"], "row")} for r in _rows()]
    return encode_examples(tok, rows, max_length=64)[0]


def test_plain_trainer_with_retain_collator(tmp_path, tiny_llama_path, tok):
    """A list dataset goes through transformers' RemoveColumnsCollator: the sample types must survive it."""
    from transformers import TrainingArguments

    from retain.data.collate import Collator
    from retain.models import pad_token_id

    trainer = LoRAMoETrainer(model=_model(tiny_llama_path), train_dataset=_features(tok), processing_class=tok,
                             data_collator=Collator(pad_token_id(tok)),
                             args=_args(tmp_path, cls=TrainingArguments, max_steps=4, gradient_accumulation_steps=2,
                                        per_device_train_batch_size=2))
    trainer.train()
    logs = _train_logs(trainer)
    assert len(logs) == 4 and all(r["lbc_loss"] > 0 for r in logs)
    assert all(r["loss"] == pytest.approx(r["lm_loss"] + r["lbc_loss"], rel=1e-5, abs=1e-6) for r in logs)
    metrics = trainer.evaluate(_features(tok)[:4])  # evaluation: the LM loss, sample types dropped
    assert metrics["eval_loss"] > 0 and not any("lbc" in k for k in metrics)
    trainer.save_model(str(tmp_path / "out"))
    assert folder_kind(tmp_path / "out") == "loramoe"


def test_lbc_weight_per_micro_batch_follows_gradient_accumulation(tmp_path, tiny_llama_path, tok):
    """Each micro-batch adds LBC / accumulation steps to the step, whether or not the LM loss is already scaled."""
    from transformers import TrainingArguments

    from retain.data.collate import Collator
    from retain.models import pad_token_id

    model = _model(tiny_llama_path).train()
    trainer = LoRAMoETrainer(model=model, train_dataset=_features(tok), data_collator=Collator(pad_token_id(tok)),
                             args=_args(tmp_path, cls=TrainingArguments, gradient_accumulation_steps=2))
    batch = trainer.data_collator(_features(tok)[:4])
    assert batch["sample_type"].tolist() == [0, 1, 0, 1]
    inputs = {k: v for k, v in batch.items() if k != "sample_type"}
    n = 2 * int((batch["labels"][:, 1:] != -100).sum())  # as if the other micro-batch had as many tokens
    with torch.no_grad():
        with sample_types(model, batch["sample_type"]):
            mean_lm = model(**inputs).loss
        aux = lbc_loss(model)
        summed_lm = model(**inputs, num_items_in_batch=n).loss
        unscaled = trainer.compute_loss(model, dict(batch))  # training_step divides it by 2 afterwards
        scaled = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(n))
    assert aux > 0
    torch.testing.assert_close(unscaled, mean_lm + aux)
    torch.testing.assert_close(scaled, summed_lm + aux / 2)


DDP_SCRIPT = """
from retain.utils.startup import import_ml_stack
import_ml_stack()
import json, os, sys
import torch
from retain.adapters.loramoe import adapter_state_dict
from retain.integrations.trl import LoRAMoESFTTrainer
from tests.integrations.test_trl import _args, _dataset, _model, _rows
from transformers import AutoTokenizer

base, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
trainer = LoRAMoESFTTrainer(model=_model(base), processing_class=AutoTokenizer.from_pretrained(base),
                            train_dataset=_dataset(_rows()),
                            args=_args(out, max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2))
trainer.train()
rank = int(os.environ["RANK"])
torch.save(adapter_state_dict(trainer.model), os.path.join(out, f"weights{rank}.pt"))
logs = [r for r in trainer.state.log_history if "loss" in r]
with open(os.path.join(out, f"logs{rank}.json"), "w") as f:
    json.dump({"processes": trainer.accelerator.num_processes, "logs": logs}, f)
trainer.save_model(os.path.join(out, "final"))
"""


@pytest.mark.slow
def test_two_process_ddp_run_agrees_across_ranks(tmp_path, tiny_llama_path):
    """torchrun, 2 CPU processes on gloo: each rank adds its own LBC, the logs are reduced over ranks."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_sft.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(script), tiny_llama_path, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"logs{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["processes"] == 2 and runs[0]["logs"] == runs[1]["logs"]
    for r in runs[0]["logs"]:
        assert r["lbc_loss"] > 0 and r["loss"] == pytest.approx(r["lm_loss"] + r["lbc_loss"], rel=1e-5, abs=1e-6)
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert folder_kind(tmp_path / "final") == "loramoe"


def test_sample_type_collator():
    seen = []

    def inner(features):
        seen.append(features)
        return {"n": len(features)}

    collate = SampleTypeCollator(inner)
    batch = collate([{"x": 1, "sample_type": "world"}, {"x": 2, "sample_type": 0}, {"x": 3, "sample_type": None},
                     {"x": 4}])
    assert batch["sample_type"].tolist() == [1, 0, -1, -1] and batch["sample_type"].dtype == torch.long
    assert all("sample_type" not in f for f in seen[-1])  # the inner collator never sees the column
    assert "sample_type" not in collate([{"x": 1}])  # no column, no key: no LBC
    with pytest.raises(RetainError, match="sample_type"):
        collate([{"x": 1, "sample_type": 2}])


def test_a_trainer_on_the_bundled_model_records_smollm2(tmp_path, bundled_smollm2, tok):
    """The base model's name_or_path is its cache folder; the saved folder records the name every API takes."""
    import json

    from transformers import TrainingArguments

    from retain.data.collate import Collator
    from retain.models import pad_token_id

    trainer = LoRAMoETrainer(model=_model(str(bundled_smollm2)), train_dataset=_features(tok), processing_class=tok,
                             data_collator=Collator(pad_token_id(tok)), args=_args(tmp_path, cls=TrainingArguments))
    trainer.save_model(str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model"] == "smollm2"
