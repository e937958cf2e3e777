# examples/trl_loramoe.py: LoRAMoE + LBC in a TRL SFTTrainer script (after examples/tg_replay.sh).
import torch
from datasets import concatenate_datasets, load_dataset
from trl import SFTConfig

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.methods import prepare_model
from retain.integrations.trl import LoRAMoESFTTrainer
from retain.models import load_model

model, tok = load_model("smollm2")  # or your own AutoModelForCausalLM and tokenizer
model = prepare_model(model, "loramoe", loramoe=LoRAMoEConfig())  # frozen base, experts + routers
task = load_dataset("json", data_files="examples/ci/data.jsonl", split="train")  # your data
world = load_dataset("json", data_files="runs/tg/sft.jsonl", split="train")  # the TG corpus
dataset = concatenate_datasets([task.add_column("sample_type", ["task"] * len(task)),
                                world.add_column("sample_type", ["world"] * len(world))])
gpu = torch.cuda.is_available()  # a GPU: bf16 and TRL's default checkpointing (memory for time); a CPU: neither
args = SFTConfig(output_dir="runs/trl", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                 bf16=gpu, activation_checkpointing=gpu, use_cpu=not gpu, report_to="none", save_strategy="no")
trainer = LoRAMoESFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
trainer.train()
trainer.save_model("runs/trl/model")  # retain's folder: load_finetuned, retain eval, retain routing
