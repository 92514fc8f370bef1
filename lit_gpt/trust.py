"""Reading pickles without running code: the `.pth` files of training and lit checkpoints, and the `.metadata` file of
a sharded (torch.distributed.checkpoint) checkpoint directory.

A single file is loaded with `torch.load(..., weights_only=True)` (tensors and plain values), or, where that refuses
it, with an unpickler that builds only tensors and dicts of them (`_TensorsOnlyUnpickler`: lit-gpt's `incremental_save`
files, pickled with protocol 5 and integer storage keys, which `weights_only` does not read); one that holds other
pickled objects is refused with `TRUST_HINT`'s advice, and one cut short or overwritten is called truncated or
corrupt, in one line each (`load_single_file`). A sharded checkpoint's `.metadata` is unpickled by an unpickler that
builds only torch.distributed.checkpoint's metadata classes, and its shards are checked to lie whole beside it
(`read_dcp_metadata`). `--trust_pickle true` (a checkpoint from a source the user trusts) loads either in full.
"""

import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch


def _torch_load(path: Path, weights_only: bool = True, **kwargs: Any) -> dict:
    try:
        return torch.load(path, mmap=True, weights_only=weights_only, map_location="cpu", **kwargs)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # a legacy (non-zip) file cannot be mapped
        return torch.load(path, weights_only=weights_only, map_location="cpu", **kwargs)


def load_single_file(path: Path, trust_pickle: bool = False, pickle_hint: Optional[str] = None) -> object:
    """The whole object of a single-file checkpoint, memory-mapped (a legacy, non-zip file is read whole). Refused in
    one line each: a file cut short, empty or not a torch file (truncated or corrupt), and one with pickled objects
    besides tensors unless `trust_pickle`; `pickle_hint` replaces the advice to pass --trust_pickle where the caller
    has no such flag."""
    if not path.is_file():
        what = "a directory without a .metadata file" if path.is_dir() else "missing"
        raise FileNotFoundError(
            f"The checkpoint {str(path)!r} is {what}: pass a `step-*.pth` file or a sharded checkpoint directory "
            "written by `fabric.save` (it holds *.distcp files and .metadata)"
        )
    try:
        with warnings.catch_warnings():  # protocol 5 (lit-gpt's incremental_save), read below if weights_only cannot
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _torch_load(path)
    except Exception as e:
        if "weights_only" not in str(e):  # a file cut short or overwritten: EOFError, "invalid header", OSError 22
            raise _unreadable(path, e) from None
        if not trust_pickle:  # pickled objects (hyperparameters of other tools, ...) that weights_only refuses
            try:  # or only tensors, pickled as weights_only does not read (lit-gpt's incremental_save)
                return _torch_load(path, weights_only=False, pickle_module=_TENSORS_ONLY)
            except _Refused:
                pass
            except Exception as e:
                raise _unreadable(path, e) from None
            raise ValueError(
                f"{str(path)!r} holds pickled Python objects besides tensors, which loading it safely "
                "(`torch.load(weights_only=True)`) refuses: unpickling them can run arbitrary code. "
                + (pickle_hint or "If the file comes from a source you trust, pass --trust_pickle true.")
            ) from None
    try:
        return _torch_load(path, weights_only=False)
    except Exception as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> ValueError:
    # torch's first sentence: it goes on about "an internal miniz error" and how checkpoints are saved
    reason = re.split(r"\.\s", str(e).splitlines()[0])[0] if str(e) else type(e).__name__
    return ValueError(
        f"{path} cannot be read ({type(e).__name__}: {reason}): it is truncated or corrupt, not a whole torch.save "
        "file (a copy or a save cut short)"
    )


def is_distributed_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def training_hparams(path: Path, trust_pickle: bool = False) -> dict:
    """The `hparams` entry of a training checkpoint, or {} when it has none; no weight is read."""
    if is_distributed_checkpoint(path):
        meta = path / "meta.pt"  # Fabric's file for everything besides the sharded tensors
        state = load_single_file(meta, trust_pickle) if meta.is_file() else {}
    else:
        state = load_single_file(path, trust_pickle)
    hparams = state.get("hparams") if isinstance(state, dict) else None
    return hparams if isinstance(hparams, dict) else {}


########################
# Sharded checkpoints read without running code
########################
# everything the `.metadata` pickle of a torch.distributed.checkpoint directory holds: its dataclasses, sizes,
# dtypes, layouts, the memory-format enum and the checkpoint's path (pathlib is `pathlib._local` from Python 3.13)
_DCP_METADATA_GLOBALS = {
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                     "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    *((module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "PurePosixPath")),
    ("collections", "OrderedDict"),
}  # fmt: skip


TRUST_HINT = "If the checkpoint comes from a source you trust, pass --trust_pickle true."


class _Refused(pickle.UnpicklingError):
    """A global that `_MetadataUnpickler` does not build (other `UnpicklingError`s are of a corrupt file)."""


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds only the classes of `_DCP_METADATA_GLOBALS` and torch dtypes: a pickle that names
    anything else (`os.system`, `builtins.eval`, ...) is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or (module, name) in _DCP_METADATA_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """An unpickler for `torch.load(pickle_module=_TENSORS_ONLY)` that builds tensors (from the storages torch's
    loader reads out of the zip by their keys), parameters and ordered dicts, and nothing else: a pickle that names
    any other global is refused before it is called (the globals `weights_only` allows for these). Pickle's own
    containers and constants need no global."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise _Refused(f"{module}.{name}")


# torch.load reads the zip, maps the storages and calls our Unpickler (storage types are resolved before find_class);
# a legacy (non-zip) file's header is read with `load`
_TENSORS_ONLY = SimpleNamespace(
    Unpickler=_TensorsOnlyUnpickler,
    load=lambda file, **kwargs: _TensorsOnlyUnpickler(file, **kwargs).load(),
    __name__="lit_gpt.trust._TENSORS_ONLY",
)


def read_dcp_metadata(file: Path, trust_pickle: bool = False) -> Any:
    """The `torch.distributed.checkpoint.metadata.Metadata` in the `.metadata` file `file`, unpickled with
    `_MetadataUnpickler` unless `trust_pickle`; its shard files must lie in the checkpoint directory, whole."""
    with open(file, "rb") as f:
        try:
            metadata = pickle.load(f) if trust_pickle else _MetadataUnpickler(f).load()
        except _Refused as e:
            raise ValueError(
                f"{file} names {e}, which the metadata of a sharded checkpoint never holds: unpickling it could run "
                f"arbitrary code, so it is not read. {TRUST_HINT}"
            ) from None
        except Exception as e:  # truncated, or not a pickle
            raise ValueError(f"{file} cannot be read ({type(e).__name__}: {e}): it is truncated or corrupt") from None
    infos = list((getattr(metadata, "storage_data", None) or {}).values())
    fields = [tuple(getattr(i, k, None) for k in ("relative_path", "offset", "length")) for i in infos]
    valid = all(isinstance(f, str) and "/" not in f and type(o) is type(n) is int for f, o, n in fields)
    if not hasattr(metadata, "state_dict_metadata") or not valid:
        raise ValueError(f"{file} is not the metadata of a sharded checkpoint whose shards lie beside it")
    # a shard missing or cut short (a copy cut short, a full disk) would fail deep inside torch's reader
    ends: Dict[str, int] = {}
    for info in infos:
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = file.parent / name
        size = shard.stat().st_size if shard.is_file() else None
        if size is None or size < end:
            state = "is missing" if size is None else f"is truncated ({size:,} bytes, its .metadata says {end:,})"
            raise ValueError(f"{file.parent} is incomplete: its shard {name} {state}")
    return metadata
