"""Files and formats at the bottom of the library: writing a file whole or not at all, the record that lets a
converter replace only its own earlier output, sizes written like `5GB`, file digests and removal.

`atomic_file` is what every writer of a final file goes through (lit checkpoints, `separators.json`, Hugging Face
shard indexes, the output record itself). A converter (`scripts/convert_*.py`, `scripts/merge_lora.py`) calls
`prepare_output_dir` before it writes and `finish_output_dir` after: the record `OUTPUT_RECORD` in the output folder
names the files it wrote, so that `--overwrite true` deletes those and nothing else.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to, renamed onto `path` once written and synced to disk: a kill or a
    full disk leaves no truncated file under the final name, and no temporary file either when it raises.

    The name is this write's own (`path.name.<pid>.<random>.tmp`): two conversions into one directory never write
    or rename each other's file, and a link left under a fixed name cannot lead the write outside the directory."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# written into an output directory before any other file: which converter owns the files of its outputs there
OUTPUT_RECORD = ".lit_gpt_conversion.json"


def prepare_output_dir(
    output_dir: Path,
    overwrite: bool,
    outputs: Tuple[str, ...],
    script: str,
    inputs: Dict[str, Path],
    require_empty: bool = True,
) -> None:
    """Make `output_dir` ready for `script`, a converter that writes files matching the globs `outputs` and then
    calls `finish_output_dir`.

    Refused: an `output_dir` that is, lies inside or holds one of `inputs` (flag -> path); without `overwrite`, a
    non-empty one (with `require_empty`) or one that holds a file of `outputs`; with `overwrite`, one that holds a
    file of `outputs` that `script` did not write there: `OUTPUT_RECORD` does not name `script`, or names the files
    of its finished conversion and this one is not among them or was changed since (size, modification time), as
    another tool's `save_pretrained` into the export changes it. Otherwise the files of `outputs` are deleted, so that
    nothing of the earlier conversion is loaded with the new one, other files are kept, and the record is written:
    nothing but the converter's own earlier output is ever deleted.
    """
    check_apart_from_inputs(output_dir, inputs)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {str(output_dir)!r} exists and is a file; pass a directory")
    stale = sorted({p for pattern in outputs for p in output_dir.glob(pattern) if p.is_file() or p.is_symlink()})
    nonempty = output_dir.is_dir() and any(output_dir.iterdir()) if require_empty else bool(stale)
    if nonempty and not overwrite:
        raise FileExistsError(
            f"--output_dir {str(output_dir)!r} is not empty; pass --overwrite true to replace the files of an earlier "
            f"conversion by {script} in it, or choose another directory"
        )
    record = _output_record(output_dir)
    mine = record.get(script)
    # the files of a finished conversion; None while one runs (a killed one: its partial files are all its own)
    written = mine.get("files") if isinstance(mine, dict) else None
    foreign = [p for p in stale if mine is None or (written is not None and written.get(p.name) != _fingerprint(p))]
    if foreign:
        names = ", ".join(p.name for p in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        why = f"no {OUTPUT_RECORD} of it there" if mine is None else f"or changed since, says {OUTPUT_RECORD}"
        raise FileExistsError(
            f"--output_dir {str(output_dir)!r} holds {names}, which {script} did not write ({why}): --overwrite true "
            "replaces only its own earlier output. Move them away or choose another directory"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in stale:
            path.unlink()
        _write_output_record(output_dir, {**record, script: {"outputs": list(outputs), "files": None}})
    except OSError as e:  # a read-only disk, a folder of another user, a full disk: before any work
        raise ValueError(
            f"--output_dir {str(output_dir)!r} cannot be written ({e.strerror or e}); pass a directory on a "
            "writable disk with room for the output"
        ) from None


def finish_output_dir(output_dir: Path, outputs: Tuple[str, ...], script: str) -> None:
    """Record in `OUTPUT_RECORD` the files of `outputs` that `script` has now written in `output_dir` (after
    `prepare_output_dir`), so that a later `--overwrite` deletes them only as they are."""
    files = {p.name: _fingerprint(p) for pattern in outputs for p in output_dir.glob(pattern) if p.is_file()}
    _write_output_record(output_dir, {**_output_record(output_dir), script: {"outputs": list(outputs), "files": files}})


def _fingerprint(path: Path) -> List[int]:
    stat = path.lstat()
    return [stat.st_size, stat.st_mtime_ns]


def _write_output_record(output_dir: Path, record: dict) -> None:
    with atomic_file(output_dir / OUTPUT_RECORD) as tmp, open(tmp, "w", encoding="utf-8") as fp:
        json.dump(record, fp, indent=2)


def _output_record(output_dir: Path) -> Dict[str, object]:
    """script -> {"outputs": its output globs, "files": name -> fingerprint, None until it finished}, of the
    converters that wrote into `output_dir` ({} if none did; an older record's script -> globs, as unfinished)."""
    try:
        record = json.loads((output_dir / OUTPUT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_apart_from_inputs(output_dir: Path, inputs: Dict[str, Path]) -> None:
    """Refuse an `output_dir` that is, lies inside or holds one of `inputs` (flag -> path), where writing or
    replacing files could destroy an input."""
    out = output_dir.resolve()
    for flag, path in inputs.items():
        source = Path(path).resolve()
        relation = "is" if out == source else "lies inside" if source in out.parents else None
        relation = relation or ("holds" if out in source.parents else None)
        if relation:
            raise ValueError(
                f"--output_dir {str(output_dir)!r} {relation} {flag} {str(path)!r}: the conversion could overwrite "
                f"or delete its input. Choose an --output_dir outside {flag} (and not holding it)"
            )


def parse_size(size: Union[str, int]) -> int:
    """`"5GB"`, `"500MB"`, `"2GiB"` or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", size, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"Cannot read the size {size!r}; write it like '5GB', '500MB' or '2GiB'")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base**power)


def file_sha256(path: Path, chunk_bytes: int = 2**24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
