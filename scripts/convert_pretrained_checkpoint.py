"""Turn a pretraining checkpoint into a lit checkpoint directory: weights only, ready for inference and export.

    python scripts/convert_pretrained_checkpoint.py --checkpoint_file out/tiny-llama-1.1b/step-00060500.pth \
        --tokenizer_dir checkpoints/meta-llama/Llama-2-7b-hf --output_dir checkpoints/lit-tiny-llama-1.1b

Writes `lit_config.json` (the model config saved in the checkpoint), `lit_model.pth` (the model's state dict, without
optimizer state and without the `_orig_mod.`/`_forward_module.`/`module.` prefixes of torch.compile, Fabric and DDP),
`separators.json` (the document separators of the training data, `lit_gpt/data/separators.py`) and the tokenizer files
found in `--tokenizer_dir`, with a `tokenizer.json` built from its `tokenizer.model` (so that
`transformers.AutoTokenizer` loads them without sentencepiece), whose `add_bos_token` says whether the model was
trained with bos before each document. The checkpoint is either one file (`fabric.save` on
one process, or with a full state dict) or a sharded directory (`fabric.save` with
`ModelParallelStrategy(save_distributed_checkpoint=True)`): the shards are consolidated here without GPUs or a process
group, a group of tensors at a time.
"""

import sys
import time
from pathlib import Path
from typing import Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from lit_gpt.convert import LIT_OUTPUTS, save_tokenizer_files  # noqa: E402
from lit_gpt.data.separators import write_separators  # noqa: E402
from lit_gpt.files import parse_size, staged_output_dir  # noqa: E402
from lit_gpt.training.checkpoint import (  # noqa: E402
    training_checkpoint_config,
    training_checkpoint_nbytes,
    training_checkpoint_separators,
    training_checkpoint_shapes,
    training_checkpoint_tensors,
    verify_checkpoint,
)
from lit_gpt.trust import is_distributed_checkpoint, training_hparams  # noqa: E402
from lit_gpt.weights import check_weights, save_lit_checkpoint  # noqa: E402


def convert(
    checkpoint_file: Path,
    tokenizer_dir: Path,
    config_name: Optional[str] = None,
    output_dir: Optional[Path] = None,
    overwrite: bool = False,
    group_size: str = "1GB",
    trust_pickle: bool = False,
) -> None:
    """Convert a pretraining checkpoint to a lit checkpoint directory.

    Args:
        checkpoint_file: A checkpoint written by `pretrain/tinyllama.py`: a `step-*.pth` file, or a directory of
            that name holding a sharded (torch.distributed.checkpoint) checkpoint.
        tokenizer_dir: Directory with the tokenizer the model was trained with (`tokenizer.model` and/or
            `tokenizer.json`); these and `tokenizer_config.json` (with the model's block size as
            `model_max_length`), `special_tokens_map.json`, `generation_config.json` are copied when present. A
            `tokenizer.model` comes with the `tokenizer.json` that encodes like it, in place of the directory's.
        config_name: Registered model name the checkpoint was trained as (`tiny-llama-1.1b`, `micro-llama`, ...).
            Checkpoints of `pretrain/tinyllama.py` record their config (with the run's `--block_size`), which is
            used: then this is only checked against it. Needed for checkpoints that record none.
        output_dir: Where to write `lit_config.json`, `lit_model.pth` and the tokenizer files; by default
            `checkpoints/lit-<config name>`.
        overwrite: Write into `output_dir` even when it is not empty. The files that an earlier run of this script
            left there (`lit_config.json`, `lit_model.pth`, the tokenizer files) are replaced once the new ones are
            written whole beside them (a failed conversion leaves them as they were), so that none of them is read
            with the new ones; other files are kept. Files of those names that this script did not
            write there are refused, never deleted, and so is an `output_dir` that is, lies in or holds
            `checkpoint_file` or `tokenizer_dir`.
        group_size: Read a sharded checkpoint in groups of tensors of about this size ('1GB', '500MB'); peak
            memory is the model's size plus one group.
        trust_pickle: Also convert a single-file checkpoint that holds pickled Python objects besides tensors
            (other tools' hyperparameters, for example), which a safe load refuses. Unpickling can run arbitrary
            code: only for files from a source you trust. Checkpoints of `pretrain/tinyllama.py` never need it.
            Also reads a sharded checkpoint whose `.metadata` names classes other than torch.distributed.checkpoint's
            metadata, or whose `meta.pt` holds pickled objects.
    """
    if not tokenizer_dir.is_dir():
        raise NotADirectoryError(
            f"--tokenizer_dir {str(tokenizer_dir)!r} does not exist; pass the directory of the tokenizer the model "
            "was trained with (for TinyLlama: checkpoints/meta-llama/Llama-2-7b-hf)"
        )
    if not any((tokenizer_dir / n).is_file() for n in ("tokenizer.model", "tokenizer.json")):
        raise FileNotFoundError(
            f"--tokenizer_dir {str(tokenizer_dir)!r} has neither tokenizer.model nor tokenizer.json"
        )
    if not checkpoint_file.exists():
        raise FileNotFoundError(f"--checkpoint_file {str(checkpoint_file)!r} does not exist")
    verify_checkpoint(checkpoint_file)  # a flipped bit is refused before anything is written
    saved = training_hparams(checkpoint_file, trust_pickle)
    if "lora" in saved:  # an adapter alone: its weights are not a model's
        base = (saved.get("base") or {}).get("checkpoint_dir", "<its base checkpoint>")
        raise ValueError(
            f"--checkpoint_file {checkpoint_file} is a LoRA checkpoint of finetune/lora.py, an adapter without the "
            f"base weights: fold it into its base with `python scripts/merge_lora.py --checkpoint_dir {base} "
            f"--lora_checkpoint {checkpoint_file}`, which writes a lit checkpoint directory"
        )
    config = training_checkpoint_config(checkpoint_file, config_name, trust_pickle)
    output_dir = output_dir or Path("checkpoints") / f"lit-{config.name}"
    # refuse a mismatching checkpoint before reading any weight or writing any file
    hint = (
        "The checkpoint's weights do not match the model config saved in it: it was changed after training or "
        "written by another tool."
        if config_name is None
        else "Pass the --config_name it was trained as, or leave --config_name out to use the config saved in it."
    )
    check_weights(training_checkpoint_shapes(checkpoint_file, trust_pickle), config, str(checkpoint_file), hint)
    inputs = {"--checkpoint_file": checkpoint_file, "--tokenizer_dir": tokenizer_dir}
    t0 = time.perf_counter()
    # the room it needs before it starts, and what a full disk's message says (a tied head is written once)
    needed = training_checkpoint_nbytes(checkpoint_file, trust_pickle, config.tie_embeddings)
    script = "convert_pretrained_checkpoint.py"
    with staged_output_dir(output_dir, overwrite, LIT_OUTPUTS, script, inputs, needed_bytes=needed) as staging:
        kind = "sharded" if is_distributed_checkpoint(checkpoint_file) else "single-file"
        print(f"Converting the {kind} checkpoint {checkpoint_file} ({config.name}) to {output_dir}")
        state_dict = dict(training_checkpoint_tensors(checkpoint_file, parse_size(group_size), trust_pickle))
        separators = training_checkpoint_separators(checkpoint_file, trust_pickle)
        copied = save_tokenizer_files(tokenizer_dir, staging, config.block_size, add_bos_token=separators.bos)
        write_separators(staging, separators)
        save_lit_checkpoint(state_dict, config, staging)
    n_bytes = (output_dir / "lit_model.pth").stat().st_size  # a tied head is written once
    print(
        f"Wrote lit_config.json, lit_model.pth ({n_bytes / 1e6:.1f} MB), separators.json ({separators}) and "
        f"{', '.join(copied)} in {time.perf_counter() - t0:.1f}s"
    )


# lit-gpt's name, with the same first four parameters
convert_checkpoint = convert


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(convert)
