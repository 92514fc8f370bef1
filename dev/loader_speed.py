"""Measure how many training sequences per second the pretraining loaders read on this machine: the global order that
pretraining uses (`lit_gpt/data/order.py`, sequences read by index) and litdata's own mix (`mixture_dataloader`,
which checkpoints written before the global order resume with), on the same sources and settings.

Example (on the data of `make demo`):

    python dev/loader_speed.py --data_dir out/demo/data --block_size 256 --micro_batch_size 8 --seconds 10
"""

import sys
import time
from pathlib import Path
from typing import Tuple

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag is refused before the imports below

from lit_gpt.data.loaders import check_data_dir, cycle_full_batches, data_sources, mixture_dataloader  # noqa: E402
from lit_gpt.data.order import GlobalBatchLoader  # noqa: E402


def main(
    data_dir: str = "out/demo/data",
    data_weights: Tuple[float, float] = (0.693584, 0.306416),
    block_size: int = 256,
    micro_batch_size: int = 8,
    num_workers: int = 1,
    seconds: float = 10.0,
    seed: int = 3407,
) -> None:
    """Read micro-batches from each loader for `seconds` after the first one and print sequences per second.

    Args:
        data_dir: Folder with the prepared `slimpajama/train` and `starcoder` (as pretraining's `--data_dir`).
        data_weights: Sampling weights of the two sources.
        block_size: Sequence length (each sequence read is `block_size + 1` tokens).
        micro_batch_size: Sequences per micro-batch (one process; the global batch is one micro-batch).
        num_workers: Loader worker processes.
        seconds: How long to read from each loader.
        seed: Seed of the data order.
    """
    if not seconds > 0 or micro_batch_size < 1 or num_workers < 0:
        raise ValueError("--seconds and --micro_batch_size must be positive, --num_workers not negative")
    check_data_dir(data_dir)
    sources = data_sources(data_dir, data_weights)[0]
    loaders = {
        "global order (GlobalBatchLoader)": iter(
            GlobalBatchLoader(sources, block_size, micro_batch_size, micro_batch_size, 0, 1, num_workers, seed)
        ),
        "litdata's mix (mixture_dataloader)": cycle_full_batches(
            mixture_dataloader(sources, block_size, micro_batch_size, num_workers, seed), micro_batch_size
        ),
    }
    for name, batches in loaders.items():
        next(batches)  # the workers' start and the first chunks' opening are not the steady speed
        start, read = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            read += next(batches).size(0)
        rate = read / (time.perf_counter() - start)
        print(f"{name}: {rate:,.0f} sequences/s ({rate * (block_size + 1):,.0f} tokens/s), {num_workers} worker(s)")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
