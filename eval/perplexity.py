"""Mean next-token loss and perplexity of a lit checkpoint over the first blocks of a prepared litdata split.

    python eval/perplexity.py --checkpoint_dir checkpoints/lit-tiny-llama-1.1b --data_dir data/slimpajama/val

Reads the split in order (no shuffling) as blocks of `block_size + 1` tokens, as `pretrain/tinyllama.py` does, and
takes the first `--num_blocks`: the same blocks, and the same numbers, on every run. The loss is averaged over every
predicted token, in float64.
"""

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Literal, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lit_gpt.data.loaders import BatchIdCheck, check_token_ids  # noqa: E402
from lit_gpt.generate import load_model  # noqa: E402
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.weights import lit_checkpoint_files  # noqa: E402


def main(
    checkpoint_dir: Path,
    data_dir: Path = Path("data/slimpajama/val"),
    num_blocks: int = 100,
    block_size: Optional[int] = None,
    batch_size: int = 4,
    precision: Optional[Literal["32-true", "bf16-true", "16-true"]] = None,
    out_file: Optional[Path] = None,
) -> dict:
    """Evaluate the perplexity of a checkpoint on a prepared split.

    Args:
        checkpoint_dir: A lit checkpoint directory (`lit_config.json`, `lit_model.pth`).
        data_dir: A split prepared by `scripts/prepare_slimpajama.py`, `scripts/prepare_starcoder.py` or
            `scripts/prepare_text.py` (litdata chunks and `index.json`).
        num_blocks: How many blocks to evaluate, from the start of the split.
        block_size: Tokens per block; by default the model's block size.
        batch_size: Blocks per forward pass.
        precision: Weights and compute dtype; by default bf16-true on a GPU that supports it, else 32-true.
        out_file: Also write the result as JSON to this file.
    """
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    if num_blocks < 1 or batch_size < 1:
        raise ValueError(f"--num_blocks ({num_blocks}) and --batch_size ({batch_size}) must be at least 1")
    if precision is None:
        precision = "bf16-true" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if not (data_dir / "index.json").is_file():
        what = "is not a prepared litdata split (no index.json)" if data_dir.exists() else "does not exist"
        raise FileNotFoundError(
            f"--data_dir {str(data_dir)!r} {what}; prepare it with `{preparation(data_dir, checkpoint_dir)}`"
        )
    lit_checkpoint_files(checkpoint_dir)
    fabric = L.Fabric(devices=1, precision=precision)
    model = load_model(fabric, checkpoint_dir)  # a bad weight file is refused before the data is read
    model_name = f"the model in {checkpoint_dir}"
    check_token_ids([str(data_dir)], model.config.padded_vocab_size, model_name)
    # a folder whose prepare.json records no largest id had its first chunk read alone: each batch is checked
    id_check = BatchIdCheck([str(data_dir)], model.config.padded_vocab_size, model_name)
    block_size = model.config.block_size if block_size is None else block_size
    if block_size > model.config.block_size:
        raise ValueError(f"--block_size {block_size} exceeds the model's block size {model.config.block_size}")

    dataset = StreamingDataset(str(data_dir), item_loader=TokensLoader(block_size=block_size + 1), shuffle=False)
    if len(dataset) < num_blocks:
        raise ValueError(
            f"{data_dir} holds {len(dataset)} blocks of {block_size + 1} tokens, fewer than --num_blocks {num_blocks}; "
            f"lower --num_blocks or --block_size"
        )
    loader = StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0, shuffle=False)

    t0 = time.perf_counter()
    loss_sum, n_tokens, n_blocks = 0.0, 0, 0
    with torch.inference_mode():
        for batch in id_check.batches(loader) if id_check else loader:
            batch = batch[: num_blocks - n_blocks].to(fabric.device).long()
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
            loss_sum += loss.double().item()
            n_tokens += batch[:, 1:].numel()
            n_blocks += batch.size(0)
            if n_blocks >= num_blocks:
                break
    mean_loss = loss_sum / n_tokens
    result = {
        "checkpoint_dir": str(checkpoint_dir),
        "data_dir": str(data_dir),
        "num_blocks": n_blocks,
        "block_size": block_size,
        "batch_size": batch_size,
        "precision": precision,
        "tokens": n_tokens,
        "loss": mean_loss,
        "perplexity": math.exp(mean_loss),
    }
    fabric.print(
        f"{n_blocks} blocks of {block_size} tokens ({n_tokens:,} predictions) from {data_dir}: "
        f"mean loss {mean_loss:.4f}, perplexity {math.exp(mean_loss):.3f} ({time.perf_counter() - t0:.1f}s)"
    )
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def preparation(data_dir: Path, checkpoint_dir: Path) -> str:
    """The command that prepares `data_dir` with the checkpoint's tokenizer: a split of SlimPajama from its raw layout
    (`.../slimpajama-raw/validation` -> `.../slimpajama/val`, as `make demo` and the tutorials lay it out), or your own
    files."""
    has_tokenizer = any((checkpoint_dir / name).is_file() for name in ("tokenizer.model", "tokenizer.json"))
    tokenizer = shlex.quote(str(checkpoint_dir)) if has_tokenizer else "<the tokenizer of the model>"
    output = shlex.quote(str(data_dir))
    if data_dir.parent.name == "slimpajama" and data_dir.name in ("train", "val", "test"):
        raw = data_dir.parent.with_name("slimpajama-raw") / ("validation" if data_dir.name == "val" else data_dir.name)
        return (
            f"python scripts/prepare_slimpajama.py --input_dir {shlex.quote(str(raw))} --output_dir {output} "
            f"--tokenizer_path {tokenizer}"
        )
    return (
        f"python scripts/prepare_text.py --input <your text files> --output_dir {output} --tokenizer_path {tokenizer}"
    )


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(main)
