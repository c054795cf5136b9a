"""File helpers every layer shares: checksums, atomic JSON, writability, process memory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_tree(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (``skip``: file names left out)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def current_umask() -> int:
    """This process's umask (Linux reports it; elsewhere it is set back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place, with the
    permissions a plain ``open(path, "w")`` gives (the temp file is private until renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """A temp directory beside ``final`` to fill; renamed to ``final`` (replacing it) when the
    block succeeds, removed when it fails: readers never see a half-written directory."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def not_a_file(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as ``what`` (``config file``, ``study file``, ...): it does not
    exist, or it is a directory; None when it is a file."""
    if path.is_file():
        return None
    return f"{what} {path} {'is a directory' if path.is_dir() else 'does not exist'}"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or not valid JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


class CorruptFileError(ValueError):
    """A file the pipeline wrote (or the user handed it) cannot be read; names the file."""


def load_json(path: Path) -> Any:
    """The JSON in ``path``; a missing or corrupt file is an error naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: corrupt, not valid JSON ({exc})") from None


def ensure_writable(directory: Path, create: bool = True, what: str = "output directory") -> None:
    """Prove ``directory`` takes files, or fail naming it (before any work). ``create=False``:
    leave nothing behind; probe its nearest existing ancestor instead (a check that fails early
    must not leave an empty run directory)."""
    target = Path(directory)
    if not create:
        while not target.exists() and target.parent != target:
            target = target.parent
        if not target.is_dir():
            raise PermissionError(f"{what} {directory} cannot be made: {target} is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"{what} {directory} is not writable: {exc.strerror}") from None


def tree_bytes(root: Path) -> int:
    """The bytes of every file under ``root`` (0 when it is gone)."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def disk_full(stage: str, work: Path, written: int) -> OSError:
    """The error for a stage that filled its disk: the directory it wrote into, what it had
    written, what is free there now that its partial output is gone."""
    free = shutil.disk_usage(work.parent).free
    return OSError(
        errno.ENOSPC,
        f"No space left on device: stage {stage} was writing into {work.parent} and had "
        f"written {written / 2**20:.1f} MiB when the disk filled; {free / 2**20:.1f} MiB are free "
        "there now (its partial output removed). Free more than that, or point output_dir at a "
        "larger disk, and run again",
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
