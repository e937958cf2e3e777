# examples/routing.sh: where a LoRAMoE fine-tune routes each sample type (after examples/tg_replay.sh).
set -euo pipefail
retain routing runs/tg_loramoe/model --data examples/routing.jsonl --out runs/routing
