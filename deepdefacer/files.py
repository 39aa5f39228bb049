"""Files at the edges: atomic writes, JSON, checksums and the names of outputs.

Every output is written under a hidden temporary name in its final folder and then renamed with
os.replace, which is atomic on POSIX file systems: a run killed at any moment leaves either the old
file, the new file, or no file under the final name, never half of one. Hidden names (leading dot)
are ignored by the BIDS validator, and each scan removes its own stale temporaries before it starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path

from deepdefacer.errors import OutputError

TEMPORARY_MARKER = ".deepdefacer-tmp-"


def split_extension(path) -> tuple[str, str]:
    """('sub-01_T1w', '.nii.gz') for 'sub-01_T1w.nii.gz'; the extension is '' when unknown."""
    name = Path(path).name
    for extension in (".nii.gz", ".nii", ".json", ".tsv", ".gz"):
        if name.endswith(extension):
            return name[: -len(extension)], extension
    stem, dot, extension = name.rpartition(".")
    return (stem, dot + extension) if dot else (name, "")



def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def temporary_path(final_path) -> Path:
    """A hidden name next to final_path, keeping its extension so nibabel picks the format."""
    final_path = Path(final_path)
    stem, extension = split_extension(final_path)
    return final_path.with_name(f".{stem}{TEMPORARY_MARKER}{uuid.uuid4().hex[:12]}{extension}")


def remove_stale_temporaries(final_path) -> None:
    """Remove temporaries a killed run left for this output (each scan owns its own names)."""
    final_path = Path(final_path)
    stem, extension = split_extension(final_path)
    if final_path.parent.is_dir():
        for leftover in final_path.parent.glob(f".{stem}{TEMPORARY_MARKER}*{extension}"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


@contextlib.contextmanager
def atomic_output(final_path):
    """Yield a temporary path; on success fsync it and rename it to final_path, else delete it.

    An OSError (a full disk, a read-only or vanished folder) becomes an OutputError naming
    final_path: the hidden temporary's name would mean nothing to the user.
    """
    final_path = Path(final_path)
    temporary = temporary_path(final_path)
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        _fsync(temporary)
        os.replace(temporary, final_path)
    except OSError as exc:
        raise OutputError(final_path, f"{(exc.strerror or str(exc)).lower()} writing {final_path}") \
            from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(obj, final_path) -> None:
    with atomic_output(final_path) as temporary:
        temporary.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def create_json_exclusive(obj, final_path) -> bool:
    """Create final_path with obj unless it exists; True if this call created it."""
    return create_text_exclusive(json.dumps(obj, indent=2) + "\n", final_path)


def create_text_exclusive(text: str, final_path) -> bool:
    """Create final_path with text unless it exists; True if this call created it.

    Safe when several processes (SLURM array tasks) race: the complete file is written under a
    temporary name, then hard-linked to the final name, which fails if another process got there
    first. Readers never see a partial file.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(final_path)
    try:
        temporary.write_text(text, encoding="utf-8")
        _fsync(temporary)
        try:
            os.link(temporary, final_path)
        except FileExistsError:
            return False
        except OSError:
            # File systems without hard links: O_EXCL still guarantees a single creator.
            try:
                fd = os.open(final_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()

