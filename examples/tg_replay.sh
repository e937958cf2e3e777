# examples/tg_replay.sh: TG replay. The base model writes its own corpus, which is mixed into training.
set -euo pipefail
retain decompress runs/tg --levels '[[3,48],[2,48]]'   # 3 questions x 2 follow-ups; default: 600 nodes
retain train examples/tg_mix.yaml                       # your data 3 : 1 TG (examples/tg_mix.yaml)
