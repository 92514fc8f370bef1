"""One order of the training sequences for every number of processes: what makes a resume on another number of GPUs
train on the sequences the uninterrupted run would have.

The mixture of sources is one infinite list of global positions 0, 1, 2, ...; position `p` holds the sequence
`(source, index)`: its source is drawn by the weights (in blocks of `BLOCK` positions, each from a generator seeded
with the seed and the block's number), and the `n`-th sequence taken from a source is the `n mod size`-th of that
source's epoch `n // size`. An epoch of a source is shuffled as litdata shuffles, by chunk: the chunks in an order
seeded with (seed, source, epoch), then the sequences of each window of `WINDOW` consecutive chunks of that order
shuffled among themselves, so that a reader holds a few chunks at a time.

Optimizer step `s` trains on the global batch of positions `[p_s, p_s + global_batch_size)`, the positions that follow
the previous step's; process `r` of `W` reads the `r`-th of `W` equal consecutive slices of it, in micro-batches. The
data position a checkpoint holds is a `Cursor`: the global position and the sequences taken from each source before
it. Neither depends on the number of processes, the micro-batch size or the loader workers: a run resumed with other
ones reads the same global batches. A run resumed with another `--global_batch_size` takes its steps from the next
sequence on.

`GlobalBatchLoader` is the training loader: a `torch.utils.data.DataLoader` whose worker processes read the sequences
that a sampler over this order names (litdata's `StreamingDataset` by index, chunks memory-mapped), in order.
`step_sequences(step)` gives the identities of any recent step's sequences, and `SequenceLog` (`--log_sequences`)
writes those each process trained on to the run's out dir.
"""

import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lit_gpt.signals import end_children_at_exit, ignore_stop_signals

ORDER = "global-v1"  # what a checkpoint's data position refers to (hparams["data_order"])
BLOCK = 4096  # positions whose sources are drawn by one generator
WINDOW = 8  # chunks whose sequences are shuffled among themselves
KEEP_STEPS = 64  # recent steps whose sequences `step_sequences` can name
PREFETCH = 4  # micro-batches each loader worker reads ahead

SequenceId = Tuple[int, int]  # (source number in the mix, sequence index in that source)


@dataclass
class Cursor:
    """A place in the global order: `position` sequences taken in all, `taken[k]` of them from source k."""

    position: int = 0
    taken: List[int] = field(default_factory=list)

    def state_dict(self) -> Dict[str, Any]:
        return {"order": ORDER, "position": self.position, "taken": list(self.taken)}


class SourceOrder:
    """The epochs of one source of `chunk_sizes[c]` sequences in chunk c, shuffled by chunk (see the module doc)."""

    def __init__(self, chunk_sizes: Sequence[int], seed: int, source: int) -> None:
        self.sizes = np.asarray(chunk_sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])  # first index of each chunk
        self.total = int(self.sizes.sum())
        self.seed, self.source = seed, source
        self._epoch: Optional[int] = None
        self._window: Optional[int] = None

    def index(self, n: int) -> int:
        """The index, in the source, of the `n`-th sequence taken from it (0-based, counting every epoch)."""
        epoch, k = divmod(n, self.total)
        if epoch != self._epoch:
            chunks = np.random.default_rng([self.seed, 1, self.source, epoch]).permutation(len(self.sizes))
            self._windows = [chunks[i : i + WINDOW] for i in range(0, len(chunks), WINDOW)]
            self._window_starts = np.cumsum([0] + [int(self.sizes[w].sum()) for w in self._windows])
            self._epoch, self._window = epoch, None
        w = int(np.searchsorted(self._window_starts, k, side="right")) - 1
        if w != self._window:
            items = np.concatenate(
                [np.arange(self.starts[c], self.starts[c] + self.sizes[c]) for c in self._windows[w]]
            )
            self._items = np.random.default_rng([self.seed, 2, self.source, epoch, w]).permutation(items)
            self._window = w
        return int(self._items[k - self._window_starts[w]])


class GlobalOrder:
    """The global order of the sequences of `sources` (a `SourceOrder` each) mixed by `weights` (see the module doc)."""

    def __init__(self, sources: Sequence[SourceOrder], weights: Sequence[float], seed: int) -> None:
        self.sources = list(sources)
        p = np.asarray(weights, dtype=np.float64)
        self.p = p / p.sum()
        self.seed = seed
        self._block: Optional[int] = None

    def source_at(self, position: int) -> int:
        block, offset = divmod(position, BLOCK)
        if block != self._block:
            rng = np.random.default_rng([self.seed, 0, block])
            self._choices = rng.choice(len(self.sources), size=BLOCK, p=self.p)
            self._block = block
        return int(self._choices[offset])

    def take(self, cursor: Cursor, n: int) -> Tuple[List[SequenceId], Cursor]:
        """The `n` sequences from `cursor` on, and the cursor after them."""
        taken = list(cursor.taken) or [0] * len(self.sources)
        ids = []
        for position in range(cursor.position, cursor.position + n):
            k = self.source_at(position)
            ids.append((k, self.sources[k].index(taken[k])))
            taken[k] += 1
        return ids, Cursor(cursor.position + n, taken)


def rank_slice(global_batch_size: int, rank: int, world_size: int) -> slice:
    """The positions of a global batch that process `rank` of `world_size` trains on: its consecutive share."""
    share = global_batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


class _Sequences(torch.utils.data.Dataset):
    """(source, index) -> the (block_size + 1)-token sequence, read by litdata from the source's chunks (opened in
    each worker process at its first read)."""

    def __init__(self, folders: Sequence[str], block_size: int) -> None:
        self.folders, self.block_size = list(folders), block_size
        self._datasets: Optional[list] = None

    def datasets(self) -> list:
        if self._datasets is None:
            from litdata.streaming import StreamingDataset, TokensLoader  # lazy: litdata is heavy (~2 s)

            loader = TokensLoader  # (block_size + 1)-token items; none spans two chunks
            self._datasets = [
                StreamingDataset(input_dir=f, item_loader=loader(block_size=self.block_size + 1), shuffle=False)
                for f in self.folders
            ]
        return self._datasets

    def chunk_sizes(self, source: int) -> List[int]:
        """The sequences in each chunk of a source, as litdata's `TokensLoader` counts them (the chunk's tokens //
        (block_size + 1)), from its `index.json`."""
        dataset = self.datasets()[source]
        len(dataset)  # reads the chunk index (from an object store, into litdata's cache folder)
        index = json.loads((Path(dataset.input_dir.path) / "index.json").read_text(encoding="utf-8"))
        return [chunk["dim"] // (self.block_size + 1) for chunk in index["chunks"]]

    def __getitem__(self, sequence: SequenceId) -> torch.Tensor:
        source, index = sequence
        return self.datasets()[source][index]

    def __getstate__(self) -> dict:  # each worker opens its own readers
        return {**self.__dict__, "_datasets": None}


class _RankBatches(torch.utils.data.Sampler):
    """The micro-batches of (source, index) that this process reads, step after step from the loader's cursor; it
    records each step's global batch and the cursor before it for the loader (it runs ahead of training: the
    DataLoader's workers prefetch)."""

    def __init__(self, loader: "GlobalBatchLoader") -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[List[SequenceId]]:
        loader = self.loader
        cursor, step = loader.cursor, loader.step
        part = rank_slice(loader.global_batch_size, loader.rank, loader.world_size)
        while True:
            ids, after = loader.order.take(cursor, loader.global_batch_size)
            loader._record(step, ids, after)
            mine = ids[part]
            for i in range(0, len(mine), loader.micro_batch_size):
                yield mine[i : i + loader.micro_batch_size]
            cursor, step = after, step + 1


class GlobalBatchLoader:
    """This process's micro-batches, (micro_batch_size, block_size + 1) token tensors, of the global order of
    `sources` ((folder, weight) pairs): each optimizer step's `global_batch_size` sequences are the same for every
    number of processes, micro-batch size and worker count (see the module doc). Iterate it once: it never ends (the
    epochs of each source follow one another). `state_dict()` is the cursor after the last whole step read, and
    `load_state_dict` continues from one (of a run with any number of processes)."""

    def __init__(
        self,
        sources: Sequence[Tuple[str, float]],
        block_size: int,
        micro_batch_size: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        self.folders = [folder for folder, _ in sources]
        self.sequences = _Sequences(self.folders, block_size)
        orders = []
        for k, (folder, weight) in enumerate(sources):
            sizes = self.sequences.chunk_sizes(k)
            if weight > 0 and sum(sizes) == 0:  # it could never be read
                raise ValueError(
                    f"--train_data: {folder} holds no block of {block_size + 1} tokens (--block_size {block_size} "
                    f"+ 1), so its weight {weight:g} could not be honoured. Prepare more data into it, or leave it "
                    "out of the mix"
                )
            orders.append(SourceOrder(sizes or [0], seed, k))
        self.order = GlobalOrder(orders, [w for _, w in sources], seed)
        self.seed = seed
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.cursor, self.step = Cursor(0, [0] * len(orders)), 0
        self._steps: OrderedDict[int, Tuple[List[SequenceId], Cursor]] = OrderedDict()  # step -> ids, cursor after
        self._read = 0  # micro-batches handed to training
        self._last: Optional[List[SequenceId]] = None

    def _record(self, step: int, ids: List[SequenceId], after: Cursor) -> None:
        self._steps[step] = (ids, after)
        while len(self._steps) > KEEP_STEPS + PREFETCH * self.num_workers + 2:  # and the steps the workers read ahead
            self._steps.popitem(last=False)

    def __iter__(self) -> Iterator[torch.Tensor]:
        sampler = _RankBatches(self)
        end_children_at_exit()  # a run that ends with an exception must not wait for the workers (lit_gpt.signals)
        loader = torch.utils.data.DataLoader(
            self.sequences,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=ignore_stop_signals,  # a stop signal is the training process's to handle
            prefetch_factor=PREFETCH if self.num_workers else None,
            # the workers' base seed from a generator of its own, as lit_gpt.data.loaders' loaders: an iterator that a
            # resumed run starts (the uninterrupted run did not) leaves torch's global state, which checkpoints save,
            # as it was
            generator=torch.Generator().manual_seed(self.seed),
        )
        per_step = self.global_batch_size // self.world_size // self.micro_batch_size
        part = rank_slice(self.global_batch_size, self.rank, self.world_size)
        first = self.step
        for i, batch in enumerate(loader):
            step, j = divmod(i, per_step)
            ids = self._steps[first + step][0][part]
            self._last = ids[j * self.micro_batch_size : (j + 1) * self.micro_batch_size]
            self._read = i + 1
            yield batch

    def last_sequences(self) -> List[SequenceId]:
        """The (source, index) of the rows of the micro-batch this process read last."""
        return list(self._last or [])

    def step_sequences(self, step: int) -> List[Tuple[str, int]]:
        """(source folder, index) of the `global_batch_size` sequences that optimizer step `step` (1-based, as the
        log counts them) trains on across all processes, in the order of the global batch; for one of the last
        `KEEP_STEPS` steps read (or any that is read ahead)."""
        if step - 1 not in self._steps:
            raise KeyError(f"step {step} is not among the {KEEP_STEPS} steps whose sequences the loader keeps")
        return [(self.folders[k], index) for k, index in self._steps[step - 1][0]]

    def state_dict(self) -> Dict[str, Any]:
        per_step = self.global_batch_size // self.world_size // self.micro_batch_size
        done, rest = divmod(self._read, per_step)
        if rest:
            raise RuntimeError(f"the data position is kept at optimizer steps; {rest} micro-batches of one are read")
        step = self.step + done
        cursor = self._steps[step - 1][1] if done else self.cursor
        return {**cursor.state_dict(), "step": step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("order") != ORDER:
            raise ValueError(f"a data position of order {state.get('order')!r}, not {ORDER!r}")
        if len(state["taken"]) != len(self.folders):
            raise ValueError(f"a data position of {len(state['taken'])} sources, this mix has {len(self.folders)}")
        self.cursor, self.step = Cursor(int(state["position"]), [int(n) for n in state["taken"]]), int(state["step"])
        self._read = 0


def row_digest(row: torch.Tensor) -> str:
    """A short digest of a sequence's tokens (CRC-32, 8 hex digits): what `SequenceLog` writes beside its identity."""
    return f"{zlib.crc32(row.contiguous().cpu().numpy().tobytes()):08x}"


class SequenceLog:
    """`--log_sequences`: the sequences each process trains on, one JSON line per optimizer step in
    `out_dir/sequences/rank-{rank}.jsonl`: `{"step": 5, "rank": 1, "sequences": [[source, index, digest], ...]}`,
    source the number of the folder in the run's `train_sources`, index the sequence's in it, digest `row_digest`
    of its tokens, in the order trained. The lines of every rank of a step, by rank, are its global batch."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.path = Path(out_dir) / "sequences" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self._read: List[list] = []  # the steps read, not yet trained (training reads one step ahead)

    def read(self, ids: Sequence[SequenceId], rows: Sequence[torch.Tensor]) -> None:
        """A step's sequences as read: their identities, and the token rows."""
        self._read.append([[k, index, row_digest(row)] for (k, index), row in zip(ids, rows)])

    def trained(self, step: int) -> None:
        """Write the line of the oldest step read, which optimizer step `step` trained on."""
        sequences = self._read.pop(0)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "rank": self.rank, "sequences": sequences}) + "\n")


def read_sequence_log(out_dir: Path) -> Dict[int, List[list]]:
    """step -> its global batch as `SequenceLog` wrote it (the ranks' lines joined by rank; a later line of a step,
    from a resumed run, replaces an earlier one)."""
    parts: Dict[int, Dict[int, list]] = {}
    for path in sorted((Path(out_dir) / "sequences").glob("rank-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            parts.setdefault(record["step"], {})[record["rank"]] = record["sequences"]
    return {step: [s for rank in sorted(ranks) for s in ranks[rank]] for step, ranks in sorted(parts.items())}


def trim_sequence_log(out_dir: Path, after_step: int) -> None:
    """Drop the lines of steps after `after_step` from every rank's `SequenceLog` file: a run resumed there (on any
    number of processes) writes them again. Call it on one process, before any writes."""
    for path in (Path(out_dir) / "sequences").glob("rank-*.jsonl"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(line for line in lines if json.loads(line)["step"] <= after_step), encoding="utf-8")
