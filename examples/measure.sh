# examples/measure.sh: fine-tune, then measure what the fine-tune learned and what it forgot.
set -euo pipefail
retain train examples/lora.yaml          # any fine-tune will do; this one is a 4-step LoRA
retain eval --tuned runs/lora/model --domain runs/lora --probe_files examples/capitals.jsonl \
  --profile tiny --out runs/eval         # drop --profile tiny for the real item counts
retain eval --out runs/eval --show lost  # the known items it no longer answers
