# examples/gate.sh: the forgetting gate on the evaluation of examples/measure.sh; exit 1 when a rule fails.
set -euo pipefail
retain eval --out runs/eval --gate examples/ci/gate.yaml   # gates the saved runs/eval/eval.json: no model loads
# in one step, evaluating and gating: retain eval --tuned runs/lora/model ... --gate examples/ci/gate.yaml
