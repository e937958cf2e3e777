"""Atomic writes and JSONL I/O with line-numbered errors.

- Every file a command produces is written to a temp file in the same directory and ``os.replace``-d
  into place, so a crash never leaves a half-written output.
- JSONL readers raise :class:`RetainError` naming ``file:line`` on malformed input.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from retain.errors import RetainError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, on failure delete it.

    Works for files and directories (for a directory the temp path does not exist yet; create it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and tmp_path.is_dir():
            import shutil

            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.is_dir():
            import shutil

            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows written."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise RetainError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RetainError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file") from None


def iter_jsonl(path: str | os.PathLike, *, allow_truncated_tail: bool = False) -> Iterator[dict]:
    """Yield one dict per non-empty line.

    Raises ``RetainError("file:line: ...")`` on a malformed line. With ``allow_truncated_tail`` a
    malformed *last* line without a trailing newline (an append interrupted by a crash) is skipped.
    """
    path = Path(path)
    if not path.exists():
        raise RetainError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_truncated_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise RetainError(f"{path}:{i}: invalid JSON ({e.msg}); fix or remove this line") from None
        if not isinstance(obj, dict):
            raise RetainError(f"{path}:{i}: expected a JSON object per line, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: str | os.PathLike, **kw: Any) -> list[dict]:
    return list(iter_jsonl(path, **kw))
