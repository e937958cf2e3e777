"""Atomic writes and JSONL I/O with line-numbered errors.

- Every file a command produces is written to a temp file in the same directory and ``os.replace``-d
  into place, so a crash never leaves a half-written output.
- Readers raise :class:`RetainError` naming ``file:line`` on malformed input: bad JSON, bytes that are
  not UTF-8 (``data.jsonl:5: not valid UTF-8 (byte 0xff)``), a folder where a file is expected.
- A full disk while writing is one line naming the path (:func:`no_space`), never a traceback; the
  temp file is removed and the target keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
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
    except BaseException as e:
        full = isinstance(e, Exception) and (is_no_space(e) or _disk_full(path.parent))  # before cleanup frees space
        if tmp_path.is_dir():
            import shutil

            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        if full:
            raise no_space(path) from None
        raise


def _disk_full(folder: Path) -> bool:
    """True when ``folder``'s file system has (almost) no space left: how a write failure that does not
    say why (torch.save's "PytorchStreamWriter failed writing file") is recognised as a full disk."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def is_no_space(e: BaseException) -> bool:
    """True for a full disk: ``OSError(ENOSPC)``, or a library error that wraps it (safetensors' Rust
    ``IoError(Os { code: 28, kind: StorageFull })``, torch's ``PytorchStreamWriter failed writing``)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "StorageFull" in text or "code: 28," in text


def no_space(path: str | os.PathLike) -> RetainError:
    """The one-line error for a full disk while writing ``path``."""
    return RetainError(f"{path}: no space left on device; free space and re-run the same command")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (complete lines) to ``path`` and fsync: all of it or none of it.

    A journal's records are appended with this. On a full disk the file is cut back to its previous
    length (so no partial line is left behind) and :func:`no_space` is raised.
    """
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            if not is_no_space(e):
                raise
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise no_space(path) from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, what: str = "file", *, torn_tail_ok: bool = False) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); a missing file, a folder or bytes that
    are not UTF-8 raise one :class:`RetainError` line naming ``file:line`` and the offending byte.

    ``torn_tail_ok``: a last line without a newline that is not UTF-8 (a multi-byte character cut by a
    kill) is dropped instead."""
    path = Path(path)
    if path.is_dir():
        raise RetainError(f"{path}: is a folder; give the path of a {what}")
    if not path.exists():
        raise RetainError(f"{path}: {what} not found")
    data = path.read_bytes()
    if torn_tail_ok and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            data[cut:].decode("utf-8")
        except UnicodeDecodeError:
            data = data[:cut]
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM (Windows editors write one) is not content
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RetainError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); re-encode the file as "
                          "UTF-8") from None


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
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RetainError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file") from None


def iter_jsonl(path: str | os.PathLike, *, allow_truncated_tail: bool = False) -> Iterator[dict]:
    """Yield one dict per non-empty line.

    Raises ``RetainError("file:line: ...")`` on a malformed line. With ``allow_truncated_tail`` a
    malformed *last* line without a trailing newline (an append interrupted by a crash) is skipped.
    """
    for _, obj in iter_jsonl_lines(path, allow_truncated_tail=allow_truncated_tail):
        yield obj


def iter_jsonl_lines(path: str | os.PathLike, *, allow_truncated_tail: bool = False, max_chars: int | None = None,
                     on_oversize: Any = None) -> Iterator[tuple[int, dict]]:
    """As :func:`iter_jsonl`, with each record's 1-based line number: ``(line, dict)``.

    ``max_chars``: a line longer than this is skipped before it is parsed, after ``on_oversize(line, chars)``."""
    path = Path(path)
    parts = read_text(path, torn_tail_ok=allow_truncated_tail).split("\n")  # not splitlines(): JSON strings may hold U+2028 or \x85
    lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    del parts
    for i, line in enumerate(lines, start=1):
        if max_chars is not None and len(line) > max_chars:
            if on_oversize is not None:
                on_oversize(i, len(line))
            continue
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
        yield i, obj


def read_jsonl(path: str | os.PathLike, **kw: Any) -> list[dict]:
    return list(iter_jsonl(path, **kw))


class FolderLock:
    """Exclusive, non-blocking lock on ``folder/.lock`` (``fcntl.flock``), held while one process works
    on a run folder (``retain train``, ``retain decompress``): a second process gets one line naming the
    folder instead of mixing its outputs with the first's.

    The folder is created when missing. The lock file is removed on release, and so is the folder when this
    lock created it and it is empty (the command failed before writing), so a failed start leaves nothing.
    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock behind.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, command: str,
                 hint: str = "wait for it to finish or use another folder"):
        self.folder, self.command, self.hint = Path(folder), command, hint
        self._f: Any = None
        self._created = False

    def __enter__(self) -> "FolderLock":
        import fcntl

        if self.folder.exists() and not self.folder.is_dir():
            raise RetainError(f"{self.folder}: exists and is not a folder; choose another folder")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        while True:
            f = open(path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                self._cleanup()
                raise RetainError(f"{self.folder}: another `{self.command}` is working on this folder; "
                                  f"{self.hint}") from None
            try:  # the file we locked is still the one at the path (a releasing process may have removed it)
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._f = f
                return self
            f.close()

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self._f is not None:
            with contextlib.suppress(OSError):  # a process that opened it meanwhile sees the inode change, retries
                (self.folder / self.NAME).unlink()
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty
