# examples/export.sh: re-export a decompress run without generating (after examples/tg_replay.sh).
set -euo pipefail
retain export runs/tg --format sft,pt --out runs/tg_export   # sft.jsonl (TRL messages), pt.jsonl (TG-PT text)
