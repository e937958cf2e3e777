"""Model assets: the SmolLM2 cache folder is made once, whole, even when first asked for twice at once."""

from __future__ import annotations

import threading
import time

from retain import assets
from retain.utils.io import atomic_path


def test_two_first_uses_at_once_convert_smollm2_once(tmp_path, monkeypatch):
    """`make test` runs two xdist workers that both ask for the default model on a fresh cache (so may two
    commands): one converts, the other waits on the lock and takes the finished folder; no temp folder stays."""
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))
    calls = []

    def slow_convert(target):  # the real conversion takes seconds: long enough for the second caller to arrive
        calls.append(target)
        time.sleep(0.3)
        with atomic_path(target) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "config.json").write_text("{}", encoding="utf-8")
            (tmp / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(assets, "_convert_smollm2", slow_convert)
    start, got = threading.Barrier(2), []

    def first_use():
        start.wait()
        got.append(assets.smollm2_path())

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    target = tmp_path / "models" / assets.SMOLLM2_DIRNAME
    assert len(calls) == 1 and got == [target, target]
    assert (target / "config.json").exists() and (target / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in target.parent.iterdir()) == [assets.SMOLLM2_DIRNAME, assets.SMOLLM2_DIRNAME + ".lock"]
