"""File helpers for the data layer: located errors, strict UTF-8 line reading, checksums, atomic writes."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file (and line where known) and says how to fix it."""


def cache_dir() -> Path:
    """Where llmrec keeps downloads and conversions (wheels, example data, converted models): `$LLMREC_CACHE`,
    default `~/.cache/llmrec`."""
    return Path(os.environ.get("LLMREC_CACHE", Path.home() / ".cache" / "llmrec"))


def located(path: str | Path, line: int | None = None) -> str:
    """Return `"path:line"` (or `"path"`) for error messages.

    Examples:
        >>> located("items.jsonl", 3)
        'items.jsonl:3'
    """
    return f"{path}:{line}" if line is not None else str(path)


def open_bytes(path: Path):
    """Open a plain or gzip file for binary reading; gzip is detected by magic bytes, not the suffix."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_lines(path: str | Path, encoding: str = "utf-8", skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` for each line of a plain or gzip text file, without the line ending.

    Raises `DataError` on a missing or empty file, or on bytes that do not decode, naming the line and
    byte so the user can find and re-encode it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; check the path.")
    seen_any = False
    with open_bytes(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 4]
                raise DataError(
                    f"{located(path, number)}: byte {err.start + 1} ({bad!r}) is not valid {encoding}. "
                    f"Re-encode the file as {encoding} (for example `iconv -f latin1 -t utf-8 {path.name}`)."
                ) from None
            text = text.rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
            if skip_blank and not text.strip():
                continue
            seen_any = True
            yield number, text
    if not seen_any:
        raise DataError(f"{path} is empty; it must hold at least one record.")


def read_versioned_json(path: Path, format_version: int, missing_fix: str, fix: str) -> dict:
    """Read a JSON artifact that must be an object with this `format_version`.

    Raises `DataError` naming the file (and line for bad JSON); `missing_fix` ends the message for an absent file,
    `fix` the others.
    """
    if not path.is_file():
        raise DataError(f"{path} not found; {missing_fix}.")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{located(path, err.lineno)}: not valid JSON ({err.msg}).") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(payload).__name__}; {fix}.")
    if payload.get("format_version") != format_version:
        raise DataError(
            f"{path}: format_version {payload.get('format_version')!r}, this llmrec reads {format_version}; {fix}."
        )
    return payload


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it is renamed to `final`, on error it is deleted.

    A killed or failed run therefore never leaves a half-written `final`. With `overwrite`, an existing
    `final` is replaced only after the new folder is complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it or choose another --out.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should be like any new folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file beside it and an atomic rename, so a killed writer
    leaves the previous file (or none), never a truncated one: results tables and the README blocks the benches
    regenerate go through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should be like any new file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, payload: object) -> None:
    """Write JSON (indented, UTF-8, trailing newline) to `path` atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
