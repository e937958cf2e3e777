# examples/loramoe_api.py: LoRAMoE + LBC in a hand-written training step, saved and loaded back.
import torch

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.loramoe import lbc_loss, sample_types
from retain.adapters.methods import prepare_model, save_finetuned
from retain.models import load_finetuned, load_model

base, tok = load_model("smollm2")
model = prepare_model(base, "loramoe", loramoe=LoRAMoEConfig(num_experts=6, rank=4, lbc_beta=0.1))
batch = tok(["The capital of France is Paris.", "Hold the reset button for 10 seconds."],
            return_tensors="pt", padding=True).to(model.device)
labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
types = torch.tensor([1, 0])  # per sample: 1 world (general knowledge, e.g. TG), 0 task, -1 unknown
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
model.train()
with sample_types(model, types):  # the forward signature is unchanged
    out = model(**batch, labels=labels)
aux = lbc_loss(model)  # β · LBC averaged over the adapted layers; None without sample types
loss = out.loss + (aux if aux is not None else 0)
loss.backward()
optimizer.step()
save_finetuned(model, "runs/loramoe_api", base_model="smollm2")  # adapter_config.json + adapter_model.safetensors
model, tok = load_finetuned("runs/loramoe_api")  # inference needs no sample types
