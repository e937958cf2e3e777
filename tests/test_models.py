"""retain.models: one loader for every kind of model, the device rule, the padding rule; and every command
that loads a model (serve, decompress) takes a fine-tuned folder of any method."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from retain.errors import RetainError
from retain.models import load_model, pad_token_id, resolve_device

METHODS = ["lora", "loramoe"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_llama_path):
    """{method: (folder, in-memory model)} for LoRA and LoRAMoE on the tiny Llama, adapter weights randomised
    (a fresh LoRA/LoRAMoE adapter is a no-op: its B matrices start at zero)."""
    from retain.adapters.config import LoRAConfig, LoRAMoEConfig
    from retain.adapters.methods import prepare_model, save_finetuned

    root = tmp_path_factory.mktemp("finetuned")
    out = {}
    for method in METHODS:
        torch.manual_seed(0)
        base, tok = load_model(tiny_llama_path, device="cpu")
        model = prepare_model(base, method, lora=LoRAConfig(r=2), loramoe=LoRAMoEConfig(num_experts=2, rank=2))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        save_finetuned(model, root / method, base_model=tiny_llama_path, tokenizer=tok)
        out[method] = (root / method, model.eval())
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", METHODS)
def test_load_model_puts_the_adapter_on_its_recorded_base(finetuned, tiny_llama_path, method):
    folder, trained = finetuned[method]
    loaded, tok = load_model(str(folder), device="cpu")
    base, _ = load_model(tiny_llama_path, device="cpu")
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    assert torch.allclose(_logits(loaded, ids), _logits(trained, ids), atol=1e-5)
    assert not torch.allclose(_logits(loaded, ids), _logits(base, ids), atol=1e-3)  # the adapter is on


@pytest.mark.parametrize("method", METHODS)
def test_serve_answers_from_a_finetuned_folder(finetuned, method):
    """`retain serve --model runs/x/model` builds this very backend; greedy replies equal the trained model's."""
    from fastapi.testclient import TestClient

    from retain.generation.backends.base import SamplingParams
    from retain.generation.backends.config import BackendConfig, make_backend
    from retain.generation.backends.hf_backend import HFBackend
    from retain.generation.serve import create_app

    folder, trained = finetuned[method]
    served = make_backend(BackendConfig(kind="hf", model=str(folder), device="cpu", progress=False))
    local = HFBackend(BackendConfig(progress=False), model=trained, tokenizer=served.tokenizer)
    messages = [{"role": "user", "content": "Name a planet."}]
    want = local.chat([messages], SamplingParams(max_new_tokens=8, temperature=0.0))[0].text
    with TestClient(create_app(served, model_name="tuned")) as client:
        r = client.post("/v1/chat/completions", json={"model": "tuned", "messages": messages, "max_tokens": 8,
                                                      "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want


@pytest.fixture(scope="module")
def decompressed(tmp_path_factory, finetuned, tiny_llama_path):
    """`retain decompress --model X` for the base and each fine-tuned folder -> {name: sft.jsonl text}."""
    from retain.cli import main

    root = tmp_path_factory.mktemp("decompress")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETAIN_BACKEND_FACTORY", "tests.generation.conftest:make_tiny_hf_backend")
    out = {}
    try:
        for name, model in [("base", tiny_llama_path)] + [(m, str(finetuned[m][0])) for m in METHODS]:
            rc = main(["decompress", str(root / name), "--model", model, "--levels", "[[2,6]]", "--topics",
                       '["science","history"]', "--dedup_threshold", "1.0", "--progress", "false",
                       "--backend.device", "cpu", "--cut_answers", "keep"])  # random models end no sentence
            assert rc == 0
            out[name] = (root / name / "sft.jsonl").read_text()
    finally:
        mp.undo()
    return out


@pytest.mark.parametrize("method", METHODS)
def test_decompress_runs_on_a_finetuned_folder(decompressed, method):
    assert decompressed[method].strip()
    assert decompressed[method] != decompressed["base"]  # the tuned model wrote it, not its base


def test_an_mllm_folder_loads_with_its_processor(tiny_mllm, tmp_path):
    from retain.multimodal.model import save_mllm

    model, processor = tiny_mllm
    save_mllm(model, processor, tmp_path / "mllm")
    loaded, proc = load_model(str(tmp_path / "mllm"), device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert hasattr(proc, "image_processor") and hasattr(proc, "tokenizer")


def _remote_code_folder(tiny_llama_path, dst):
    """A model folder whose config names its own Python code; importing that code creates ``ran``."""
    shutil.copytree(tiny_llama_path, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type="retain_test_llama", architectures=["RemoteLlama"],
               auto_map={"AutoConfig": "remote_code.RemoteConfig", "AutoModelForCausalLM": "remote_code.RemoteLlama"})
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "remote_code.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(dst / 'ran')!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class RemoteConfig(LlamaConfig):\n    model_type = 'retain_test_llama'\n"
        "class RemoteLlama(LlamaForCausalLM):\n    config_class = RemoteConfig\n")
    return dst


def test_trust_remote_code_is_off_unless_asked(tiny_llama_path, tmp_path):
    folder = _remote_code_folder(tiny_llama_path, tmp_path / "remote")
    with pytest.raises(RetainError) as e:
        load_model(str(folder), device="cpu")
    assert len(str(e.value).splitlines()) == 1 and str(folder) in str(e.value)
    assert not (folder / "ran").exists()  # the folder's code never ran
    model, _ = load_model(str(folder), device="cpu", trust_remote_code=True)
    assert type(model).__name__ == "RemoteLlama" and (folder / "ran").exists()


@pytest.mark.parametrize("damage", ["unknown_arch", "bad_json", "no_base", "pickle"])
def test_a_load_failure_is_one_line_naming_the_option(tiny_llama_path, finetuned, tmp_path, damage):
    folder = tmp_path / damage
    if damage == "no_base":  # an adapter whose recorded base model is gone
        shutil.copytree(finetuned["loramoe"][0], folder)
        meta = json.loads((folder / "adapter_config.json").read_text())
        meta["base_model"] = str(tmp_path / "gone")
        (folder / "adapter_config.json").write_text(json.dumps(meta))
    else:
        shutil.copytree(tiny_llama_path, folder)
        if damage == "unknown_arch":
            cfg = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_arch"}))
        elif damage == "bad_json":
            (folder / "config.json").write_text("{\n  nope\n")
        else:
            (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(RetainError) as e:
        load_model(str(folder), device="cpu", key="--model")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and (msg.startswith("--model") or str(folder) in msg), msg


def test_the_device_rule():
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RetainError, match=r"^--backend.device gpu9: .*use auto"):
        resolve_device("gpu9", key="--backend.device")
    if not torch.cuda.is_available():
        with pytest.raises(RetainError, match=r"^model.device cuda:1: CUDA is not available"):
            resolve_device("cuda:1", key="model.device")


def test_the_padding_rule(tiny_llama_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    assert pad_token_id(tok) == tok.pad_token_id  # its own pad id is kept
    tok.pad_token = None
    assert tok.pad_token_id is None
    assert pad_token_id(tok) == tok.eos_token_id == tok.pad_token_id  # EOS pads, and the tokenizer agrees
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(RetainError, match="neither a pad nor an eos token"):
        pad_token_id(tok)


# -- every command takes every folder `retain train` writes (issue 22 item 7) --------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_path):
    """{method: the model folder `retain train` wrote}: one step of LoRA and of LoRAMoE on the tiny Llama
    (adapter folders: adapter_config.json and weights, no config.json)."""
    import yaml

    from retain.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+1?"},
                                                     {"role": "assistant", "content": f"{i + 1}"}]}) + "\n"
                            for i in range(8)))
    out = {}
    for method in METHODS:
        recipe = root / f"{method}.yaml"
        recipe.write_text(yaml.safe_dump({
            "model": {"name": tiny_llama_path}, "method": method, "lora": {"r": 2},
            "loramoe": {"num_experts": 2, "rank": 2}, "datasets": [{"path": str(data), "type": "task"}],
            "train": {"output_dir": str(root / method), "max_steps": 1, "batch_size": 2, "max_length": 96,
                      "progress": False}}))
        assert main(["train", str(recipe)]) == 0
        out[method] = root / method / "model"
        assert not (out[method] / "config.json").exists()  # what made the old pre-check refuse it
    return out


@pytest.mark.parametrize("method", METHODS)
def test_decompress_takes_a_trained_folder(trained, tmp_path, method, capsys):
    """`retain decompress --model <LoRA folder>` said 'folder has no config.json' (a check before the loader);
    the plugin-backend runs above skipped that check, so they missed it."""
    from retain.cli import main

    rc = main(["decompress", str(tmp_path / "tg"), "--model", str(trained[method]), "--levels", "[[2,4]]",
               "--topics", '["science","history"]', "--dedup_threshold", "1.0", "--progress", "false",
               "--backend.device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "tg" / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("method", METHODS)
def test_serve_takes_a_trained_folder(trained, method, monkeypatch):
    import socket

    import uvicorn
    from fastapi.testclient import TestClient

    from retain.generation.serve import ServeConfig, run_serve

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_serve(ServeConfig(model=str(trained[method]), port=port, served_model_name="t")) == 0
    with TestClient(apps[0]) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "1+1?"}],
                                                      "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method", METHODS)
def test_eval_takes_a_trained_folder(trained, tiny_llama_path, tmp_path, method):
    from retain.cli import main

    rc = main(["eval", "--base", tiny_llama_path, "--tuned", f"[{trained[method]}]", "--out", str(tmp_path / "ev"),
               "--profile", "tiny", "--probes", "{arc_easy: 4}", "--domain_items", "4"])
    assert rc == 0


@pytest.mark.parametrize("method", METHODS)
def test_routing_takes_a_loramoe_folder_and_names_what_a_lora_folder_lacks(trained, tmp_path, method, capsys):
    from retain.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    rc = main(["routing", str(trained[method]), "--data", str(data), "--out", str(tmp_path / "rep")])
    if method == "loramoe":
        assert rc == 0 and (tmp_path / "rep" / "routing.json").exists()
    else:  # routing reports a router: a LoRA folder has none; one line, exit 2
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "not a LoRAMoE adapter folder" in err and err.count("\n") == 1


# -- the bundled model has one name, smollm2, that every API accepts and every folder records (issue 23) --

def test_model_name_is_smollm2_for_every_name_of_the_bundled_model(bundled_smollm2, tiny_llama_path):
    from retain.assets import model_name, resolve_model

    assert [model_name(n) for n in ("smollm2", "SmolLM2-135M-Instruct", str(bundled_smollm2))] == ["smollm2"] * 3
    assert model_name(tiny_llama_path) == tiny_llama_path  # any other folder is recorded as given
    assert resolve_model("smollm2") == str(bundled_smollm2)


def _another_machine(bundled, tmp_path, monkeypatch) -> list:
    """Move the bundled model away and point $RETAIN_CACHE at an empty folder; converting the model (on first
    use of 'smollm2') copies it there. Returns the list of conversions made."""
    from retain import assets

    tiny = tmp_path / "tiny"
    shutil.move(str(bundled), tiny)
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "other_cache"))
    converted = []
    monkeypatch.setattr(assets, "_convert_smollm2", lambda target: (converted.append(target),
                                                                     shutil.copytree(tiny, target)))
    return converted


@pytest.mark.parametrize("method", METHODS)
def test_an_adapter_on_the_bundled_model_records_smollm2_and_loads_on_another_machine(bundled_smollm2, tmp_path,
                                                                                      monkeypatch, method):
    """The base was given as the cache folder (as a script that loads it by path would): the folder records
    'smollm2', which resolves on a machine whose cache is elsewhere, converting the model on first use."""
    from retain import assets
    from retain.adapters.config import LoRAConfig, LoRAMoEConfig
    from retain.adapters.methods import prepare_model, save_finetuned

    torch.manual_seed(0)
    base, tok = load_model(str(bundled_smollm2), device="cpu")
    model = prepare_model(base, method, lora=LoRAConfig(r=2), loramoe=LoRAMoEConfig(num_experts=2, rank=2))
    save_finetuned(model, tmp_path / "adapter", base_model=str(bundled_smollm2), tokenizer=tok)
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path" if method == "lora" else "base_model"] == "smollm2"

    converted = _another_machine(bundled_smollm2, tmp_path, monkeypatch)
    loaded, _ = load_model(str(tmp_path / "adapter"), device="cpu")
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    assert torch.allclose(_logits(loaded, ids), _logits(model.eval(), ids), atol=1e-5)
    assert converted == [tmp_path / "other_cache" / "models" / assets.SMOLLM2_DIRNAME]


def test_eval_takes_smollm2_as_base_and_a_folder_that_records_it(bundled_smollm2, tmp_path, monkeypatch, capsys):
    from retain.adapters.config import LoRAConfig
    from retain.adapters.methods import prepare_model, save_finetuned
    from retain.cli import main

    base, tok = load_model(str(bundled_smollm2), device="cpu")
    save_finetuned(prepare_model(base, "lora", lora=LoRAConfig(r=2)), tmp_path / "lora", base_model=str(bundled_smollm2))
    _another_machine(bundled_smollm2, tmp_path, monkeypatch)
    rc = main(["eval", "--base", "smollm2", "--tuned", f"[{tmp_path / 'lora'}]", "--out", str(tmp_path / "ev"),
               "--profile", "tiny", "--probes", "{arc_easy: 4}", "--domain_items", "4", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err


def test_decompress_records_smollm2_not_its_cache_folder(bundled_smollm2, tmp_path, capsys):
    from retain.cli import main

    rc = main(["decompress", str(tmp_path / "tg"), "--model", "smollm2", "--levels", "[[2,4]]",
               "--topics", '["science","history"]', "--dedup_threshold", "1.0", "--progress", "false",
               "--backend.device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "tg" / "manifest.json").read_text())["model"] == "smollm2"


def test_serve_answers_to_a_short_stable_name_and_to_the_folder_it_was_given(trained, bundled_smollm2, monkeypatch):
    """`retain serve --model runs/x/model` served the id 'runs/x/model'; now 'x' (the run's name), and the path
    is accepted too; /v1/models lists the id first. The bundled model is 'smollm2' however it was given."""
    import socket

    import uvicorn
    from fastapi.testclient import TestClient

    from retain.generation.serve import ServeConfig, run_serve, served_names

    assert served_names("smollm2") == ("smollm2", ())
    assert served_names(str(bundled_smollm2)) == ("smollm2", (str(bundled_smollm2),))
    assert served_names(str(trained["lora"]), "mine") == ("mine", ())  # a name given is the only one
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_serve(ServeConfig(model=str(trained["lora"]), port=port)) == 0
    ask = {"messages": [{"role": "user", "content": "1+1?"}], "max_tokens": 2, "temperature": 0}
    with TestClient(apps[0]) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["lora", str(trained["lora"])]
        for name in ("lora", str(trained["lora"])):
            r = client.post("/v1/chat/completions", json={**ask, "model": name})
            assert r.status_code == 200 and r.json()["model"] == "lora", r.text
        r = client.post("/v1/chat/completions", json={**ask, "model": "smollm2"})
        assert r.status_code == 404 and "serves `lora`" in r.json()["error"]["message"]
