"""easy-VQA as LLaVA-style records: the visual domain of the miniature MLLM (issue 8).

- Source: the ``easy-vqa==1.0`` package (MIT licence, (c) 2019 Victor Zhou; installed ``--no-deps`` from
  requirements-assets.txt). It ships 64 × 64 RGB PNGs of one coloured shape each: 4,000 train images
  with 38,575 questions and 1,000 test images with 9,673; 13 answers (circle / rectangle / triangle,
  8 colours, yes / no; 74 % of the questions are yes/no). The package is read, never imported.
- Splits, all disjoint **by image**, so no image is asked about on both sides:
  ``heldout`` = the package's test images (the reported VQA accuracy; never trained or tuned on);
  ``train`` / ``dev`` = the package's train images, an image in ``dev`` iff
  ``sha256(seed 0, image id) < DEV_FRACTION`` (10 %), the rule of ``olmo_eval.domain_split``.
- A record is LLaVA's JSON shape, ready for :func:`retain.data.formats.load_examples` with
  ``image_folder=image_folder()``: ``{"id", "image": "train/images/12.png", "conversations":
  [{"from": "human", "value": "<image>\\n{question} Answer with one word."}, {"from": "gpt",
  "value": answer}], "answer"}``.
"""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path
from typing import Literal

from retain.data.olmo_eval import _stable_unit
from retain.errors import RetainError
from retain.utils.io import read_json, read_text

PIP = "easy-vqa==1.0"
DEV_FRACTION = 0.1
INSTRUCTION = "Answer with one word."
Split = Literal["train", "dev", "heldout"]


def image_folder() -> Path:
    """The package's ``data`` folder; record ``image`` paths are relative to it."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise RetainError(f"package '{PIP}' is not installed; run: pip install --no-deps {PIP}")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (data / "answers.txt").is_file():
        raise RetainError(f"{data}: easy-VQA data missing; reinstall {PIP} with --no-deps")
    return data


def answers() -> list[str]:
    """The 13 possible answers, in the package's order."""
    return [a.strip() for a in read_text(image_folder() / "answers.txt").splitlines() if a.strip()]


def records(split: Split = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """LLaVA-style records of one split. Order is a ``seed``-shuffle (so ``n`` takes a reproducible
    random subset); the split itself never depends on ``seed``."""
    if split not in ("train", "dev", "heldout"):
        raise RetainError(f"easy_vqa split {split!r}: choose train, dev or heldout")
    part = "test" if split == "heldout" else "train"
    rows = read_json(image_folder() / part / "questions.json")  # [[question, answer, image_id], ...]
    out = []
    for i, (question, answer, image_id) in enumerate(rows):
        if split != "heldout" and (_stable_unit(f"easy_vqa/{image_id}") < DEV_FRACTION) != (split == "dev"):
            continue
        out.append({
            "id": f"easy_vqa/{part}/{i}",
            "image": f"{part}/images/{image_id}.png",
            "conversations": [{"from": "human", "value": f"<image>\n{question} {INSTRUCTION}"},
                              {"from": "gpt", "value": answer}],
            "answer": answer,
        })
    random.Random(seed).shuffle(out)
    return out[:n] if n is not None else out


def majority_answer(rows: list[dict]) -> tuple[str, float]:
    """(the most common answer, its share of ``rows``): the accuracy of always giving it."""
    if not rows:
        raise RetainError("easy_vqa: no records to count answers in")
    answer, count = Counter(r["answer"] for r in rows).most_common(1)[0]
    return answer, count / len(rows)


def score(prediction: str, answer: str) -> bool:
    """Exact match of the reply's first word (lower-cased, punctuation stripped) with the answer."""
    words = prediction.strip().lower().split()
    return bool(words) and words[0].strip(".,!?;:\"'") == answer
