"""Fold a LoRA adapter of `finetune/lora.py` into its base weights: an ordinary lit checkpoint directory.

    python scripts/merge_lora.py --checkpoint_dir checkpoints/lit-micro-llama \
        --lora_checkpoint out/lora-micro-llama/step-00000020.pth --output_dir checkpoints/lit-micro-llama-lora

The output holds `lit_config.json`, `separators.json` and the tokenizer files of the base and a
`lit_model.pth` of the merged weights in the base's dtype: `generate/base.py`, `eval/perplexity.py` and
`scripts/convert_lit_checkpoint.py` read it as any other. The base must be the one the adapter was trained on
(its config, and the size and SHA-256 of its `lit_model.pth`, are recorded in the adapter checkpoint).
"""

import sys
import time
from pathlib import Path
from typing import Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.convert import LIT_OUTPUTS  # noqa: E402
from lit_gpt.data.separators import Separators, read_separators, write_separators  # noqa: E402
from lit_gpt.files import staged_output_dir  # noqa: E402
from lit_gpt.lora import LoRAConfig, apply_lora, merge_lora, tied_head_refusal  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.training.checkpoint import (  # noqa: E402
    find_latest,
    load_metadata,
    training_checkpoint_tensors,
    verify_checkpoint,
)
from lit_gpt.training.finetune import check_base  # noqa: E402
from lit_gpt.weights import (  # noqa: E402
    copy_tokenizer_files,
    lit_checkpoint_files,
    load_lit_state_dict,
    save_lit_checkpoint,
)


def merge(
    checkpoint_dir: Path,
    lora_checkpoint: Path,
    output_dir: Optional[Path] = None,
    overwrite: bool = False,
    trust_pickle: bool = False,
) -> None:
    """Merge a LoRA adapter into the weights it was trained on.

    Args:
        checkpoint_dir: The base lit checkpoint directory the adapter was trained on (`--checkpoint_dir` of
            finetune/lora.py).
        lora_checkpoint: A checkpoint of finetune/lora.py (`step-*.pth`), or its `--out_dir` to take the newest one.
        output_dir: Where to write the merged lit checkpoint directory. Default: `<checkpoint_dir>-lora`.
        overwrite: Write into `output_dir` even when it is not empty, replacing the files an earlier merge wrote
            there (other files are kept; files of those names that this script did not write are refused).
        trust_pickle: Read an adapter checkpoint that holds pickled Python objects besides tensors and plain values.
            Unpickling can run arbitrary code: only for files from a source you trust.
    """
    config, model_file = lit_checkpoint_files(checkpoint_dir)
    if lora_checkpoint.is_dir() and not lora_checkpoint.name.startswith("step-"):
        latest = find_latest(lora_checkpoint)
        if latest is None:
            raise FileNotFoundError(f"--lora_checkpoint {lora_checkpoint} holds no step-*.pth checkpoint")
        lora_checkpoint = latest
    if not lora_checkpoint.exists():
        raise FileNotFoundError(
            f"--lora_checkpoint {lora_checkpoint} does not exist: pass the --out_dir of "
            "finetune/lora.py, or one of its step-*.pth checkpoints"
        )
    if not lora_checkpoint.is_file():
        raise FileNotFoundError(f"--lora_checkpoint {lora_checkpoint} is not a checkpoint file of finetune/lora.py")
    verify_checkpoint(lora_checkpoint)  # a flipped bit, or a digest taken away, is refused before anything is read
    hparams = load_metadata(lora_checkpoint, trust_pickle).get("hparams", {})
    if "lora" not in hparams or "base" not in hparams:
        raise ValueError(
            f"--lora_checkpoint {lora_checkpoint} is not a checkpoint of finetune/lora.py (it records no adapter); "
            "a checkpoint of finetune/full.py is converted with scripts/convert_pretrained_checkpoint.py"
        )
    check_base(hparams["base"], checkpoint_dir, f"--lora_checkpoint {lora_checkpoint}")
    # the prompts of finetuning began as its record says: the merged model is asked the same way (generate/base.py
    # reads separators.json), also when the base's separators.json was written or changed after the finetuning
    separators = read_separators(checkpoint_dir)
    if hparams.get("separators") is not None:
        trained = Separators.from_dict(hparams["separators"], f"--lora_checkpoint {lora_checkpoint}'s hparams")
        if trained != separators:
            print(
                f"note: {lora_checkpoint} was finetuned with prompts begun as for a model trained with {trained}; "
                f"{checkpoint_dir} now says {separators}: the merged checkpoint records the finetuning's, which its "
                "prompts must follow",
                file=sys.stderr,
            )
            separators = trained
    # the adapter checked against its own settings before anything is written
    t0 = time.perf_counter()
    try:
        lora = LoRAConfig(**hparams["lora"])
    except TypeError as e:
        raise ValueError(f"--lora_checkpoint {lora_checkpoint} records LoRA settings of another version: {e}") from None
    if lora.head and config.tie_embeddings:
        raise ValueError(tied_head_refusal(config.name, f"--lora_checkpoint {lora_checkpoint} adapts the head"))
    # the one reader of training checkpoints: memory-mapped, one-line refusals of a file that is not one
    adapter = dict(training_checkpoint_tensors(lora_checkpoint, trust_pickle=trust_pickle))
    with torch.device("meta"):
        model = GPT(config)
    apply_lora(model, lora)
    expected = {k: tuple(p.shape) for k, p in model.named_parameters() if "lora_" in k}
    missing = [k for k in expected if k not in adapter]
    unexpected = [k for k in adapter if k not in expected]
    wrong = [f"{k} {tuple(adapter[k].shape)} (expected {expected[k]})" for k in expected
             if k in adapter and tuple(adapter[k].shape) != expected[k]]  # fmt: skip
    if missing or unexpected or wrong:
        raise ValueError(
            f"--lora_checkpoint {lora_checkpoint} does not fit its own LoRA settings {hparams['lora']}: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]}"
        )
    output_dir = output_dir or checkpoint_dir.with_name(checkpoint_dir.name + "-lora")
    inputs = {"--checkpoint_dir": checkpoint_dir, "--lora_checkpoint": lora_checkpoint}
    needed = model_file.stat().st_size  # the merged weights, in the base's dtype: what a full disk's message says
    with staged_output_dir(output_dir, overwrite, LIT_OUTPUTS, "merge_lora.py", inputs, needed_bytes=needed) as staging:
        with torch.device("meta"):
            model = GPT(config)
        model.load_state_dict(load_lit_state_dict(model_file), strict=True, assign=True)  # memory-mapped
        apply_lora(model, lora)
        model.load_state_dict(adapter, strict=False)
        state_dict = merge_lora(model).state_dict()
        copied = copy_tokenizer_files(checkpoint_dir, staging)
        write_separators(staging, separators)
        save_lit_checkpoint(state_dict, config, staging)
    adapter_bytes = sum(t.nbytes for t in adapter.values())
    print(
        f"Merged the adapter of {lora_checkpoint} ({adapter_bytes / 1e6:.2f} MB, rank {lora.r}) into {model_file}: "
        f"wrote {output_dir} (lit_config.json, lit_model.pth, separators.json, {', '.join(copied)}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(merge)
