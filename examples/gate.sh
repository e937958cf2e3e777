# examples/gate.sh: the forgetting gate (after examples/measure.sh); exit 1 when a rule fails.
set -euo pipefail
retain eval --tuned runs/lora/model --domain runs/lora --probe_files examples/capitals.jsonl \
  --profile tiny --reference runs/eval --skip_base --gate examples/ci/gate.yaml --out runs/gate
