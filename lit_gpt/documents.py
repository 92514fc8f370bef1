"""Documents inside packed training rows, for attention that stays within each document (`--document_mask`).

Training rows are windows cut from documents laid end to end, each followed by the end-of-document token (`eos`,
see the separator convention in `lit_gpt/data/separators.py`). With a document mask a position attends only to the
earlier positions of its own document, where a document ends with, and includes, each `eos`: the row
[a a eos b b eos c] holds three documents, and the `eos` after `a a` belongs to the first. A row that starts or ends
in the middle of a document holds a piece of it, which is a document of that row.

`find_documents` describes a batch once per forward pass; from it the attention kernel's `prepare` function
(`lit_gpt/attention.py`) derives, also once, what the kernel reads in every layer: the explicit mask (CPU, the
reference), a flex-attention block mask (CUDA), or the cumulative document lengths of flash-attn-4's
variable-length kernels (Hopper), which need a bound on the number of documents known on the host.
`count_documents` gives that bound from the batch before it goes to the GPU, so that no value is copied back from
the device; without it the count is read from the device once.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Documents:
    """The documents of a (B, T) batch of token ids."""

    ids: Tensor  # (B, T) int32: the index of each position's document within its row, from 0
    positions: Tensor  # (B, T) int64: each position's offset from the start of its document
    max_documents: Optional[int] = None  # a host-side bound on the documents of the batch (all rows together)

    def mask(self) -> Tensor:
        """The explicit (B, 1, T, T) boolean mask: True where query position i may attend to key position j (j <= i
        and the same document)."""
        T = self.ids.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=self.ids.device).tril()
        same = self.ids.unsqueeze(-1) == self.ids.unsqueeze(-2)
        return (same & causal).unsqueeze(1)

    def cu_seqlens(self) -> Tensor:
        """The starts of the documents in the flattened (B * T) tokens and their end, (max_documents + 1,) int32,
        padded at the end with empty documents (repeats of B * T): flash-attn-4's `cu_seqlens`."""
        B, T = self.ids.shape
        starts = is_start(self.ids).flatten()
        if self.max_documents is None:
            self.max_documents = int(starts.sum())  # a host sync; count_documents avoids it
        else:
            # a bound below the count would drop the last starts and merge their documents into one, silently:
            # checked on the device, without a read-back (on a GPU a failed check stops the process)
            torch._assert_async(
                starts.sum() <= self.max_documents,
                "max_documents is below the number of documents in the batch: count them with "
                "lit_gpt.documents.count_documents on the model's input ids",  # a constant: traceable by dynamo
            )
        # the flat index of every document start, in order, then B * T for the padding
        index = torch.nonzero_static(starts, size=self.max_documents, fill_value=B * T).squeeze(-1)
        end = torch.full((1,), B * T, dtype=index.dtype, device=index.device)
        return torch.cat((index, end)).to(torch.int32)


def is_start(ids: Tensor) -> Tensor:
    """(B, T) bool: the positions where a document starts (the first of each row, and each after an eos)."""
    start = torch.ones_like(ids, dtype=torch.bool)
    start[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return start


def find_documents(idx: Tensor, eos_id: int, max_documents: Optional[int] = None) -> Documents:
    """The documents of the token ids `idx` (B, T), each ending with and including an `eos_id` token.

    `max_documents`, the number of documents of the batch or more (`count_documents`), lets the variable-length
    kernels size their inputs without reading the count back from the device."""
    eos = (idx == eos_id).to(torch.int32)
    # a position's document is the number of eos tokens before it: an eos closes its own document
    ids = torch.cumsum(eos, dim=1, dtype=torch.int32) - eos
    T = idx.size(1)
    arange = torch.arange(T, device=idx.device).expand_as(idx)
    start = torch.where(is_start(ids), arange, torch.zeros_like(arange))
    positions = arange - torch.cummax(start, dim=1).values
    return Documents(ids=ids, positions=positions, max_documents=max_documents)


def count_documents(idx: Tensor, eos_id: int, multiple: int = 64) -> int:
    """The number of documents in the rows of `idx` (the model's input ids, (B, T), on the host), rounded up to a
    `multiple`, so that the bound `find_documents` takes changes rarely (each new value is a new input size for the
    compiled blocks). One document per row, and one more after each eos that is not a row's last token."""
    n = idx.size(0) + int((idx[:, :-1] == eos_id).sum())
    return -(-n // multiple) * multiple


def check_document_flags(document_mask: bool, document_positions: bool, eos_id: Optional[int] = None) -> None:
    """Refuse `--document_positions true` or `--eos_id` without `--document_mask true`, where they would change
    nothing."""
    if document_positions and not document_mask:
        raise ValueError(
            "--document_positions true restarts positions at each document of --document_mask: pass "
            "--document_mask true as well, or leave --document_positions out"
        )
    if eos_id is not None and not document_mask:
        raise ValueError(
            f"--eos_id {eos_id} is the token where --document_mask splits documents: pass --document_mask true as "
            "well, or leave --eos_id out (the data's separators are set when it is prepared: --bos/--eos there)"
        )
