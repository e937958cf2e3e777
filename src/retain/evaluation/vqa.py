"""Visual domain score of an image-text-to-text model: closed-answer VQA accuracy without generation.

- Each item is a LLaVA-style record (``image``, ``conversations`` [human, gpt], ``answer``; see
  :mod:`retain.data.easy_vqa`). The prompt is the human turn rendered by the model's chat template with
  the generation prompt, its ``<image>`` expanded to the processor's image tokens.
- The model's prediction is the answer whose **first reply token** has the highest next-token
  log-probability after the prompt (restricted to the answer set: 13 words for easy-VQA), the label
  scoring of the text domains (:func:`retain.evaluation.probes.score_probe`). The answers' first tokens
  must differ (checked: :func:`answer_tokens`), so the argmax is an answer.
- Per item: ``correct``, ``margin`` (gold log-prob minus the best wrong one, nats), ``pred`` / ``gold``
  (answer indices), the shape :func:`retain.evaluation.suite.evaluate_from_results` reads as a domain
  probe, so VQA gets the same tables, paired intervals and label-collapse flag as a text domain.
- Inputs are left-padded with ``position_ids`` from the mask; ``pixel_values`` holds the batch's images
  in row order (one per row).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from retain.errors import RetainError

PROBE_NAME = "domain:easy_vqa"


def _prompt_ids(processor: Any, question: str) -> list[int]:
    """Token ids of the rendered user turn + generation prompt, ``<image>`` expanded."""
    from retain.multimodal.collate import tokens_per_image

    tok = processor.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = tokens_per_image(processor)
    out: list[int] = []
    for t in ids:
        out += [t] * n if t == processor.image_token_id else [t]
    return out


def answer_tokens(processor: Any, answers: Sequence[str]) -> list[int]:
    """The first token of each answer as the assistant reply begins (after the generation prompt).

    Raises when two answers share a first token (their scores would be the same number)."""
    tok = processor.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    firsts = []
    for a in answers:
        ids = tok(prompt + a, add_special_tokens=False)["input_ids"]
        if ids[:len(p_ids)] != p_ids or len(ids) == len(p_ids):
            raise RetainError(f"answer {a!r}: does not tokenize as a continuation of the prompt")
        firsts.append(ids[len(p_ids)])
    seen: dict[int, str] = {}
    for a, t in zip(answers, firsts):
        if t in seen:
            raise RetainError(f"answers {seen[t]!r} and {a!r} start with the same token; VQA scoring needs distinct ones")
        seen[t] = a
    return firsts


def score_vqa(model, processor, records: Sequence[dict], image_folder: str | Path, answers: Sequence[str], *,
              batch_size: int = 32) -> list[dict]:
    """Per record ``{"id", "correct", "margin", "pred", "gold", "k"}`` (see module docstring), in input order."""
    from PIL import Image

    from retain.evaluation.scoring import eval_mode, model_device
    from retain.models import pad_token_id

    answers = list(answers)
    keys = torch.tensor(answer_tokens(processor, answers))
    index = {a: i for i, a in enumerate(answers)}
    pad = pad_token_id(processor.tokenizer)
    rows = []
    for r in records:
        if r["answer"] not in index:
            raise RetainError(f"{r.get('id')}: answer {r['answer']!r} is not one of {answers}")
        rows.append((r, _prompt_ids(processor, r["conversations"][0]["value"])))
    from retain.multimodal.model import tower_dtype

    out: list[dict] = []
    dev, pix_dtype = model_device(model), tower_dtype(model)  # a bfloat16 model takes bfloat16 pixels
    with eval_mode(model):
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            T = max(len(ids) for _, ids in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, (_, seq) in enumerate(chunk):
                ids[i, T - len(seq):] = torch.tensor(seq)
                mask[i, T - len(seq):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            images = []
            for r, _ in chunk:
                with Image.open(Path(image_folder) / r["image"]) as im:
                    images.append(im.convert("RGB"))
            pix = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           pixel_values=pix.to(dev, pix_dtype), logits_to_keep=1, use_cache=False).logits[:, -1].float()
            lp = torch.log_softmax(logits, -1)[:, keys.to(dev)].cpu()  # (B, n_answers)
            for (r, _), row in zip(chunk, lp):
                gold = index[r["answer"]]
                pred = int(row.argmax())
                wrong = torch.cat([row[:gold], row[gold + 1:]])
                out.append({"id": r["id"], "correct": pred == gold, "margin": float(row[gold] - wrong.max()),
                            "pred": pred, "gold": gold, "k": len(answers)})
    return out


def vqa_accuracy(results: Sequence[dict]) -> float:
    """Share of correct items."""
    if not results:
        raise RetainError("vqa: no items scored")
    return sum(bool(r["correct"]) for r in results) / len(results)


def evaluate_mllm(model, processor, suite, ref, heldout: Sequence[dict]) -> dict:
    """:func:`retain.evaluation.suite.evaluate` through the model's text path (probes, retention and drift
    against ``ref``, the base reference) plus easy-VQA on ``heldout`` records as the domain probe
    (``domain_score`` = VQA accuracy, per-item outcomes under ``items["domain:easy_vqa"]``)."""
    from retain.data import easy_vqa
    from retain.evaluation.suite import evaluate, evaluate_from_results

    results: dict[str, list[dict]] = {}
    m = evaluate(model, processor.tokenizer, suite, ref, _results=results)
    t = time.perf_counter()
    results[PROBE_NAME] = score_vqa(model, processor, heldout, easy_vqa.image_folder(), easy_vqa.answers(),
                                    batch_size=suite.batch_size)
    vqa_s = round(time.perf_counter() - t, 2)
    out = evaluate_from_results(results, ref, suite, {"kl_drift": m["kl_drift"], "kl_opening": m["kl_opening"]})
    out.update(drift_prompts=m["drift_prompts"], seconds=round(m["seconds"] + vqa_s, 2),
               timings={**m["timings"], "vqa": vqa_s})
    return out
