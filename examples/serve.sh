# examples/serve.sh: serve a fine-tune over an OpenAI-compatible API (after examples/measure.sh).
set -euo pipefail
port=${PORT:-8000}
retain serve --model runs/lora/model --served_model_name acme-lora --port "$port" &
server=$!; trap 'kill $server' EXIT
until curl -sf "localhost:$port/health" >/dev/null; do sleep 1; kill -0 $server; done   # loads in seconds
curl -sf "localhost:$port/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model": "acme-lora",
  "messages": [{"role": "user", "content": "How do I reset my Acme router?"}], "max_tokens": 32}'
