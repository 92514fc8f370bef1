"""Files and formats at the bottom of the library: writing a file whole or not at all, the record that lets a
converter replace only its own earlier output, sizes written like `5GB`, file digests and removal.

A file or folder that must be read back exactly (a training checkpoint, `lit_model.pth`) carries the SHA-256 of what
was written: a `torch.save` file (a zip) in its zip comment (`seal_zip`, checked by `check_seal`), a folder in
`CHECKSUMS`, the digest of every other file in it (`write_checksums`, checked by `check_checksums`). Both are written
before the file or folder is renamed into place. A flipped bit on disk or in a copy is then refused when it is read
(`CorruptFile`); a file written before the digests were recorded has none and is read as it is. So that a digest
stripped or deleted is not taken for that, what was written with one says so where the reader sees it apart from the
digest (a training checkpoint in its hparams, `lit_model.pth` by `sealed_mark` beside it), and the reader passes that
as `expected`.

`atomic_file` is what every writer of a final file goes through (lit checkpoints, `separators.json`, Hugging Face
shard indexes, the output record itself). A converter (`scripts/convert_*.py`, `scripts/merge_lora.py`) writes
its output folder through `staged_output_dir`: into a hidden sibling that replaces the folder only once complete
(`replace_dir`, which preparation uses too), with the record `OUTPUT_RECORD` of the files it wrote, so that
`--overwrite true` replaces those and nothing else. A write that the disk or the location refuses (full, quota,
permissions, read-only) is said in one line by `write_failure`.
"""

import contextlib
import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from lit_gpt.cli import UserError


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


# written into an output directory with the other files: which converter owns the files of its outputs there
OUTPUT_RECORD = ".lit_gpt_conversion.json"


@contextlib.contextmanager
def staged_output_dir(
    output_dir: Path,
    overwrite: bool,
    outputs: Tuple[str, ...],
    script: str,
    inputs: Dict[str, Path],
    require_empty: bool = True,
    needed_bytes: Optional[int] = None,
) -> Iterator[Path]:
    """A new folder to write `script`'s output into, which replaces `output_dir` only once written whole.

    `prepare_output_dir` checks `output_dir` first. The folder is a hidden sibling of `output_dir`; when the block
    ends, the files of `output_dir` that are not `script`'s earlier output (a README, the Hugging Face files beside
    which `convert_hf_checkpoint.py` writes) are hard-linked into it, and `replace_dir` swaps it in. A failure or a
    kill while writing leaves the earlier output as it was (a full disk needs room for the old output and the new one
    at once); a write refused by the disk or the location (`write_failure`) ends in one line, which gives the free
    space and `needed_bytes`, the size of the output (estimated from the tensors to be written).
    """
    prepare_output_dir(output_dir, overwrite, outputs, script, inputs, require_empty)
    staging = staging_dir(output_dir)
    try:
        with refused_writes(output_dir, needed_bytes):
            yield staging
            if output_dir.is_dir():
                link_tree(output_dir, staging, skip=lambda p: p.name == OUTPUT_RECORD or _matches(p.name, outputs))
            finish_output_dir(staging, outputs, script, _output_record(output_dir))
            replace_dir(staging, output_dir)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def prepare_output_dir(
    output_dir: Path,
    overwrite: bool,
    outputs: Tuple[str, ...],
    script: str,
    inputs: Dict[str, Path],
    require_empty: bool = True,
) -> None:
    """Check that `script`, a converter that writes files matching the globs `outputs` (through
    `staged_output_dir`), may replace its output in `output_dir`; nothing is written or deleted.

    Refused: an `output_dir` that is, lies inside or holds one of `inputs` (flag -> path); without `overwrite`, a
    non-empty one (with `require_empty`) or one that holds a file of `outputs`; with `overwrite`, one that holds a
    file of `outputs` that `script` did not write there: `OUTPUT_RECORD` does not name `script`, or names the files
    of its finished conversion and this one is not among them or was changed since (size, modification time), as
    another tool's `save_pretrained` into the export changes it. Nothing but the converter's own earlier output is
    ever replaced; the other files are kept.
    """
    check_apart_from_inputs(output_dir, inputs)
    recover_replaced(output_dir)
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
    # the files of a finished conversion; None in a record of an older version, written before the conversion
    written = mine.get("files") if isinstance(mine, dict) else None
    foreign = [p for p in stale if mine is None or (written is not None and written.get(p.name) != _fingerprint(p))]
    if foreign:
        names = ", ".join(p.name for p in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        why = f"no {OUTPUT_RECORD} of it there" if mine is None else f"or changed since, says {OUTPUT_RECORD}"
        raise FileExistsError(
            f"--output_dir {str(output_dir)!r} holds {names}, which {script} did not write ({why}): --overwrite true "
            "replaces only its own earlier output. Move them away or choose another directory"
        )


def finish_output_dir(
    output_dir: Path, outputs: Tuple[str, ...], script: str, record: Optional[Dict[str, object]] = None
) -> None:
    """Record in `OUTPUT_RECORD` the files of `outputs` that `script` has now written in `output_dir`, so that a later
    `--overwrite` replaces them only as they are; `record`: the other converters' entries to keep."""
    files = {p.name: _fingerprint(p) for pattern in outputs for p in output_dir.glob(pattern) if p.is_file()}
    record = _output_record(output_dir) if record is None else record
    _write_output_record(output_dir, {**record, script: {"outputs": list(outputs), "files": files}})


def _matches(name: str, patterns: Tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


########################
# Replacing a folder whole: written beside it, swapped in by renames
########################


def staging_dir(path: Path) -> Path:
    """A fresh hidden sibling of `path` (`.<name>.partial-<pid>-<random>`) to write its new content into, with the
    permissions of a folder made by `mkdir`; such folders of processes that are gone are removed first. A location
    that cannot be written (a read-only disk, a folder of another user, a path through a file) is refused here,
    before any work, naming `path` as the `--output_dir` it is."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):
            pid = stale.name.split("-")[-2] if stale.name.count("-") >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    except OSError as e:
        if (refusal := write_failure(e, path, kept="Nothing was written")) is not None:
            raise refusal from None  # a full or read-only disk, no permission
        # mkdir's "File exists" for a path through a file (`a-file/out`)
        reason = "Not a directory" if e.errno in (errno.EEXIST, errno.ENOTDIR) else (e.strerror or str(e))
        raise ValueError(
            f"--output_dir {str(path)!r} cannot be written ({reason}); pass a directory on a writable disk with room "
            "for the output"
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    # mkdtemp makes it 0700; it becomes the output folder, which others (a shared folder) read like any other
    staging.chmod(0o777 & ~umask)
    return staging


def replace_dir(new: Path, path: Path, remove_old: Optional[Callable[[Path], None]] = None) -> None:
    """Rename the finished folder `new` to `path`: an earlier `path` is renamed to `.<name>.old-<pid>` first and
    removed after (by `remove_old` if given, else whole). A kill between the renames leaves the old folder under that
    name, which `recover_replaced` (called before every replacement) renames back; one after them, the new folder in
    place and the old one, which it removes."""
    old = None
    if path.is_dir() and any(path.iterdir()):
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.rename(path, old)
    elif path.is_dir():
        path.rmdir()
    try:
        os.rename(new, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        (remove_old or shutil.rmtree)(old)


def recover_replaced(path: Path, remove_old: Optional[Callable[[Path], None]] = None) -> None:
    """Finish what a `replace_dir` of `path` killed by a process that is gone left: its old folder is renamed back
    when `path` is missing (killed between the renames), or removed when the new one is in place."""
    for old in sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*")):
        pid = old.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if not path.exists():
            os.rename(old, path)
            print(f"note: restored {path} from {old.name}, left by an interrupted replacement")
        else:
            (remove_old or shutil.rmtree)(old)


def link_tree(source: Path, target: Path, skip: Callable[[Path], bool]) -> None:
    """Hard-link the entries of the folder `source` that `skip` does not pick into `target` (links kept as links;
    copied where the file system cannot link)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in source.iterdir():
        if skip(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / entry.name, symlinks=True, copy_function=link)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), target / entry.name)
        else:
            link(str(entry), str(target / entry.name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


########################
# Writes that the disk or the location refuses
########################

# the errors of a write that the user fixes, not the code
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
# less free space than this after a write error that lost its errno (torch's "unexpected pos 3584 vs 3478",
# safetensors' SafetensorError) means the disk is full
NEARLY_FULL = 2**24


@contextlib.contextmanager
def refused_writes(path: Path, needed_bytes: Optional[int] = None) -> Iterator[None]:
    """Writes under `path` whose refusal by the disk or the location (`write_failure`) ends in one line."""
    try:
        yield
    except Exception as e:
        if (refusal := write_failure(e, path, needed_bytes)) is not None:
            raise refusal from None
        raise


def write_failure(
    e: BaseException,
    path: Path,
    needed_bytes: Optional[int] = None,
    kept: str = "Nothing written there before was changed",
) -> Optional[UserError]:
    """The one-line refusal for `e`, raised while writing `path` (a file or a folder), when the disk or the location
    refused the write: a full disk or quota (with the free space, and the space needed when `needed_bytes` is
    known), no permission, a read-only file system; `kept` ends it (what is left as it was, what to do then). None
    for any other error, which keeps its traceback."""
    code = next((c.errno for c in _causes(e) if isinstance(c, OSError) and c.errno in _WRITE_ERRNOS), None)
    free = _free_bytes(path)
    if code is None:
        lost_errno = isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError"
        if not lost_errno or free is None or free >= NEARLY_FULL:
            return None
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        room = f"{_megabytes(free)} free" if free is not None else "the free space is unknown"
        needs = f"it needs about {_megabytes(needed_bytes)}, " if needed_bytes else ""
        todo = f"{needs}{room}: free space there or choose a location on a disk with room"
    else:
        todo = "choose a location you can write to"
    return UserError(f"cannot write {str(path)!r}: {_WRITE_ERRNOS[code]}; {todo}. {kept}")


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _free_bytes(path: Path) -> Optional[int]:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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


def file_sha256(path: Path, chunk_bytes: int = 2**24, end: Optional[int] = None) -> str:
    """The SHA-256 of the file `path` (of its first `end` bytes, if given), read 16 MiB at a time: about 700 MB/s on
    a CPU with SHA instructions, faster than BLAKE2b there (tutorials/pretrain_tinyllama.md, "Checkpoints")."""
    digest = hashlib.sha256()
    left = end if end is not None else float("inf")
    with open(path, "rb") as f:
        while left > 0 and (chunk := f.read(int(min(chunk_bytes, left)))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class CorruptFile(ValueError):
    """A file whose bytes differ from the digest recorded when it was written."""


CHECKSUMS = "checksums.json"
_EOCD = b"PK\x05\x06"  # a zip's end-of-central-directory record: 22 bytes and then the comment
_SEAL = b"lit-gpt sha256 "
_SEAL_BYTES = len(_SEAL) + 64


def seal_zip(path: Path) -> None:
    """Append the SHA-256 of the zip file `path` (a `torch.save` file, which has no comment), of every byte before its
    end record, to it as its zip comment: `torch.load` and `zipfile` read it as before."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(max(size - 22, 0))
        record = bytearray(f.read(22))
        if len(record) < 22 or record[:4] != _EOCD or record[20:22] != b"\0\0":
            raise ValueError(f"{path} is not a torch.save file (a zip without a comment): it cannot be sealed")
        record[20:22] = struct.pack("<H", _SEAL_BYTES)
        f.seek(size - 22)
        f.write(bytes(record) + _SEAL + file_sha256(path, end=size - 22).encode())


def check_seal(path: Path, expected: Optional[str] = None) -> bool:
    """Whether `path` carries the digest of `seal_zip` (False: a file written before digests were recorded, or by
    another tool, which is read as it is); `CorruptFile` where its bytes differ from it, or where it has none but
    `expected` says why it should (`missing_digest`)."""
    size = path.stat().st_size
    end = size - 22 - _SEAL_BYTES
    with open(path, "rb") as f:
        f.seek(max(end, 0))
        tail = f.read()
    if end < 0 or tail[:4] != _EOCD or tail[20:22] != struct.pack("<H", _SEAL_BYTES) or not tail[22:].startswith(_SEAL):
        if expected and tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0":  # a whole zip, without a comment
            raise missing_digest(path, "its zip comment", expected)
        if expected:  # no zip end at all: cut short or overwritten, not stripped
            raise CorruptFile(
                f"{path} is truncated or corrupt: it does not end with the zip record and the SHA-256 written with it "
                f"({expected}; a copy or a save cut short). Use a whole copy, or make the file again"
            )
        return False
    if file_sha256(path, end=end) != tail[22 + len(_SEAL) :].decode("ascii", "replace"):
        raise CorruptFile(
            f"{path} is corrupt: its bytes differ from the SHA-256 written with it (a flipped bit on disk or in a copy)"
        )
    return True


def missing_digest(path: Path, where: str, expected: str) -> CorruptFile:
    """The refusal of `path`, whose SHA-256 (`where`) is gone although `expected` says that one was written with it:
    stripped or deleted, it would let a flipped bit through as in a file written before digests were recorded."""
    return CorruptFile(
        f"{path} has lost the SHA-256 written with it ({where} is missing or empty, though {expected}): a flipped bit "
        "would go unnoticed. Use a copy that has it, or make the file again"
    )


def sealed_mark(path: Path) -> Path:
    """The file beside a sealed `path` that says it was written with a seal (`lit_model.pth.sealed`), for a file that
    holds nothing else to say it: a reader that finds the mark but no seal refuses the file (`check_seal`'s
    `expected`)."""
    return path.with_name(path.name + ".sealed")


def write_sealed_mark(path: Path) -> None:
    with atomic_file(sealed_mark(path)) as tmp:
        tmp.write_text(f"{path.name} carries the SHA-256 of its bytes in its zip comment (lit_gpt/files.py)\n")


def write_checksums(directory: Path) -> None:
    """`directory/CHECKSUMS`: the SHA-256 of every other file in `directory` (not of sub-folders)."""
    digests = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    with atomic_file(directory / CHECKSUMS) as tmp, open(tmp, "w", encoding="utf-8") as fp:
        json.dump(digests, fp, indent=1)


def check_checksums(directory: Path) -> bool:
    """Whether `directory` has `CHECKSUMS` (False: written before they were recorded, read as it is, unless the
    caller knows that it had one: `missing_digest`); `CorruptFile` where a file it names is missing or differs."""
    try:
        digests = json.loads((directory / CHECKSUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:
        raise CorruptFile(f"{directory}/{CHECKSUMS} cannot be read ({e}): the folder is corrupt") from None
    if not isinstance(digests, dict):
        raise CorruptFile(f"{directory}/{CHECKSUMS} is not a mapping of file names to digests: the folder is corrupt")
    for name, digest in digests.items():
        file = directory / str(name)
        if "/" in str(name) or not file.is_file():
            raise CorruptFile(f"{directory} is incomplete: {name}, which {CHECKSUMS} names, is missing")
        if file_sha256(file) != digest:
            raise CorruptFile(
                f"{file} is corrupt: its bytes differ from the SHA-256 in {CHECKSUMS} (a flipped bit on disk or in a "
                "copy)"
            )
    return True


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
