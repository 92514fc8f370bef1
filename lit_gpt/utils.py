"""lit-gpt's `lit_gpt.utils` names, with lit-gpt's meaning, for scripts written against lit-gpt (February 2024).

Each is small and stands on this project's own pieces: `chunked_cross_entropy` (lit-gpt's finetuning loss, -1 as the
ignored target), `num_parameters` of a module, `CycleIterator`, `check_valid_checkpoint_dir` (exits with a message as
lit-gpt's does) and `incremental_save`, which writes lit-gpt's lazily saved `.pth` files: each tensor's bytes go into
the zip when `store_early` is called on it, so a converter holds one tensor at a time, and the pickle written at the
end refers to them by key. Such files are read back by `lit_gpt.trust.load_single_file` without running code.
"""

import io
import pickle
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.config import find_multiple
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.weights import lit_checkpoint_files

__all__ = [
    "CycleIterator",
    "check_valid_checkpoint_dir",
    "chunked_cross_entropy",
    "find_multiple",
    "incremental_save",
    "num_parameters",
]


def num_parameters(module: nn.Module, requires_grad: Optional[bool] = None) -> int:
    """The number of elements of `module`'s parameters; only the trainable (`requires_grad=True`) or frozen ones
    (`False`) when given."""
    return sum(p.numel() for p in module.parameters() if requires_grad is None or p.requires_grad == requires_grad)


def chunked_cross_entropy(
    logits: Union[torch.Tensor, List[torch.Tensor]],
    targets: torch.Tensor,
    chunk_size: int = 128,
    ignore_index: int = -1,
) -> torch.Tensor:
    """The mean cross-entropy of `logits` (B, T, V), or of a list of its pieces along T, against `targets` (B, T),
    over the targets that are not `ignore_index`; computed `chunk_size` rows at a time (0: in one piece), which
    lowers the peak memory of backward."""
    pieces = logits if isinstance(logits, list) else [logits]
    target_pieces = targets.split([p.size(1) for p in pieces], dim=1) if isinstance(logits, list) else [targets]
    total = torch.zeros((), device=targets.device)
    for piece, target in zip(pieces, target_pieces):
        rows, target = piece.reshape(-1, piece.size(-1)), target.reshape(-1)
        step = chunk_size if chunk_size > 0 else rows.size(0)
        for r, t in zip(rows.split(step), target.split(step)):
            total = total + F.cross_entropy(r.float(), t.long(), ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


class CycleIterator:
    """`next()` goes through `iterable` again and again, counting the completed passes in `epoch`; unlike
    `itertools.cycle` it keeps nothing and asks `iterable` for a new iterator at each pass (a shuffling loader
    shuffles again)."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable
        self.epoch = 0
        self._iterator: Optional[Iterator] = None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._iterator = iter(self.iterable)
            return next(self._iterator)  # an empty iterable stops here

    def __iter__(self) -> "CycleIterator":
        return self


def check_valid_checkpoint_dir(checkpoint_dir: Path) -> None:
    """Return if `checkpoint_dir` is a lit checkpoint directory that loads (its config file, `lit_model.pth` and a
    tokenizer); else print what is missing and how to make one, and exit with status 1, as lit-gpt does."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        lit_checkpoint_files(checkpoint_dir)
        Tokenizer(checkpoint_dir)
    except (OSError, ValueError) as e:
        print(f"--checkpoint_dir {str(checkpoint_dir)!r}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


########################
# lit-gpt's incremental_save format
########################
class _Written:
    """A storage whose bytes are already in the archive: pickled as the persistent id that refers to them."""

    def __init__(self, pid: tuple) -> None:
        self.pid = pid


class _EarlyTensor:
    """What `incremental_save.store_early` returns: pickled as the tensor, whose bytes it no longer holds."""

    def __init__(self, storage: _Written, tensor: torch.Tensor) -> None:
        self.args = (storage, tensor.storage_offset(), tuple(tensor.size()), tensor.stride(), tensor.requires_grad)

    def __reduce_ex__(self, protocol: int):
        return torch._utils._rebuild_tensor_v2, (*self.args, OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, saver: "incremental_save", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saver = saver

    def persistent_id(self, obj: Any) -> Optional[tuple]:
        if isinstance(obj, _Written):
            return obj.pid
        if isinstance(obj, torch.storage.TypedStorage):  # a tensor pickled whole, not stored early
            return self.saver._write(obj).pid
        return None


class incremental_save:
    """`with incremental_save(path) as saver: ...; saver.save(state_dict)`, as lit-gpt's converters write
    `lit_model.pth`: `saver.store_early(tensor)` writes the tensor's bytes into the zip at once and returns a stand-in
    to put in the state dict in its place (so the tensor can be freed); `save(obj)` writes the pickle (protocol 5,
    storages referred to by integer keys), once. The result loads with `torch.load(path, weights_only=False)` and
    with this project's loaders, which read it without running code."""

    def __init__(self, name: Union[str, Path]) -> None:
        self.name = name
        self.zipfile = torch._C.PyTorchFileWriter(str(name))
        self.has_saved = False
        self.next_key = 0
        self._written: dict = {}  # (data_ptr, dtype, nbytes) of a storage -> its _Written

    def __enter__(self) -> "incremental_save":
        return self

    def store_early(self, tensor: torch.Tensor) -> _EarlyTensor:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"incremental_save.store_early takes a tensor, not {type(tensor).__name__}")
        return _EarlyTensor(self._write(tensor.untyped_storage(), tensor.dtype), tensor)

    def save(self, obj: Any) -> None:
        if self.has_saved:
            raise RuntimeError(f"{self.name}: save() is called once, after every store_early()")
        buffer = io.BytesIO()
        _Pickler(self, buffer, protocol=5).dump(obj)
        data = buffer.getvalue()
        self.zipfile.write_record("data.pkl", data, len(data))
        self.has_saved = True

    def _write(self, storage: Union[torch.UntypedStorage, torch.storage.TypedStorage], dtype=None) -> _Written:
        if isinstance(storage, torch.storage.TypedStorage):
            storage, dtype = storage._untyped_storage, storage.dtype
        if self.has_saved:
            raise RuntimeError(f"{self.name}: a tensor is stored before save(), not after")
        ident = (storage.data_ptr(), dtype, storage.nbytes())
        if ident in self._written and storage.data_ptr() != 0:
            return self._written[ident]
        key = self.next_key
        self.next_key += 1
        cpu = storage.cpu() if storage.device.type != "cpu" else storage
        self.zipfile.write_record(f"data/{key}", cpu, cpu.nbytes())
        # (the storage class as the pickle names it, its key, where it lived, its number of elements)
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
        storage_class = getattr(torch, typed._pickle_storage_type())
        location = torch.serialization.location_tag(storage)
        written = _Written(("storage", storage_class, key, location, typed._size()))
        self._written[ident] = written
        return written

    def __exit__(self, *exc: Any) -> None:
        self.zipfile.write_end_of_file()
