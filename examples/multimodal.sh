# examples/multimodal.sh: visual instruction tuning of a miniature MLLM (SmolLM2 + EfficientNet), measured.
set -euo pipefail
retain demo --scenario mllm --profile smoke --methods '[lora]' --out runs/mllm   # minutes; --profile default: ~15
