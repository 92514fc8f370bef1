"""Export a lit checkpoint directory to a Hugging Face transformers directory.

    python scripts/convert_lit_checkpoint.py --checkpoint_dir checkpoints/lit-tiny-llama-1.1b \
        --output_dir checkpoints/hf-tiny-llama-1.1b

The output loads with `transformers.AutoModelForCausalLM.from_pretrained(output_dir)` and
`AutoTokenizer.from_pretrained(output_dir)` and nothing else (no sentencepiece): `config.json` (LlamaConfig),
`model.safetensors` (`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` above `--max_shard_size`),
`generation_config.json` and the tokenizer files, with a `tokenizer.json` that encodes like `tokenizer.model`
(`lit_gpt/convert.py: save_tokenizer_files`). Weights are mapped one tensor at a time (`lit_gpt/hf.py`) from the
memory-mapped `lit_model.pth`, so only one shard is in memory.

lit-gpt's flags are taken too: `--checkpoint_path <dir>/lit_model.pth --output_path <file> --config_path
<dir>/lit_config.json` writes the Hugging Face state dict alone into one torch file, as lit-gpt's script did (for
`from_pretrained(..., state_dict=torch.load(file))`); `convert_lit_checkpoint(checkpoint_path, output_path,
config_path)` is that call from Python.
"""

import json
import sys
import time
from pathlib import Path
from typing import Literal, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import HF_OUTPUTS, check_hf_tokenizer, save_hf_tokenizer, save_hf_weights  # noqa: E402
from lit_gpt.files import atomic_file, parse_size, staged_output_dir  # noqa: E402
from lit_gpt.hf import config_to_hf, lit_to_hf  # noqa: E402
from lit_gpt.weights import check_weights, lit_checkpoint_files, load_lit_state_dict  # noqa: E402

# a probe for the tokenizer check: spaces, newlines, digits, code, non-ASCII
_PROBE = "  two <s> Hello world!  Two  spaces\n\tdef f(x):\n        return x ** 2  # 3.14159\nÜber naïve café, 東京 🙂"


def convert(
    checkpoint_dir: Optional[Path] = None,
    output_dir: Optional[Path] = None,
    max_shard_size: str = "5GB",
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
    overwrite: bool = False,
    checkpoint_path: Optional[Path] = None,
    output_path: Optional[Path] = None,
    config_path: Optional[Path] = None,
) -> None:
    """Export a lit checkpoint directory to a Hugging Face transformers directory.

    Args:
        checkpoint_dir: A lit checkpoint directory (`lit_config.json`, `lit_model.pth`, tokenizer files).
        output_dir: Where to write the Hugging Face files.
        max_shard_size: Largest safetensors file ('5GB', '500MB'); larger models are split into shards with an
            index.
        dtype: Cast the weights to this dtype; by default they keep the dtype they were saved in.
        overwrite: Write into `output_dir` even when it is not empty. The weight, config and tokenizer files that an
            earlier export or `save_pretrained` left there (`*.safetensors`, `*.index.json`, `pytorch_model*.bin`,
            `config.json`, `generation_config.json`, `tokenizer*`, ...) are replaced, once the new export is written
            whole beside it, so that transformers loads only the new ones (a failed export leaves the earlier one as
            it was; the disk needs room for both); other files (a README, for example) are kept. Files of those
            names that this script did not write there (another tool's `save_pretrained`, for example) are refused,
            never deleted, and so is an `output_dir` that is, lies in or holds `checkpoint_dir`.
        checkpoint_path: lit-gpt's flag, with `--output_path` and `--config_path` in place of the two above: the
            `lit_model.pth` to export.
        output_path: lit-gpt's flag: the torch file to write the Hugging Face state dict into (no config or
            tokenizer files), such as `out/model.bin`.
        config_path: lit-gpt's flag: the `lit_config.json` (or litgpt's `model_config.yaml`) of `--checkpoint_path`.
    """
    lit_gpts = {"--checkpoint_path": checkpoint_path, "--output_path": output_path, "--config_path": config_path}
    ours = {"--checkpoint_dir": checkpoint_dir, "--output_dir": output_dir}
    if any(v is not None for v in lit_gpts.values()):
        if any(v is not None for v in ours.values()) or any(v is None for v in lit_gpts.values()):
            raise ValueError(
                "Pass either --checkpoint_dir and --output_dir, or lit-gpt's three flags --checkpoint_path, "
                "--output_path and --config_path together"
            )
        return convert_lit_checkpoint(checkpoint_path, output_path, config_path, dtype=dtype)
    if checkpoint_dir is None or output_dir is None:
        raise ValueError("Pass --checkpoint_dir (a lit checkpoint directory) and --output_dir (where to write)")
    config, model_file = lit_checkpoint_files(checkpoint_dir)
    state_dict = load_lit_state_dict(model_file)
    # transformers would refuse the export only when loading it
    hint = "Its lit_config.json does not describe the weights in lit_model.pth: convert the checkpoint again."
    check_weights({k: v.shape for k, v in state_dict.items()}, config, str(model_file), hint)
    t0 = time.perf_counter()
    inputs = {"--checkpoint_dir": checkpoint_dir}
    target = getattr(torch, dtype) if dtype else None
    # the room it needs before it starts, and what a full disk's message says: the weights in the dtype written (the
    # tokenizer files are small), a tied head not among them (Hugging Face's tied checkpoints store the embedding once)
    tied_head = {"lm_head.weight"} if config.tie_embeddings else set()
    needed = sum(v.numel() * (target or v.dtype).itemsize for k, v in state_dict.items() if k not in tied_head)
    script = "convert_lit_checkpoint.py"
    with staged_output_dir(output_dir, overwrite, HF_OUTPUTS, script, inputs, needed_bytes=needed) as staging:
        items = ((k, v.to(target) if target else v) for k, v in lit_to_hf(state_dict.items(), config))
        shards, n_bytes, saved_dtype = save_hf_weights(items, staging, parse_size(max_shard_size))
        bos, eos = save_hf_tokenizer(checkpoint_dir, staging, config.block_size)
        hf_config = config_to_hf(config)
        dtype_name = str(saved_dtype).removeprefix("torch.")
        hf_config.update(bos_token_id=bos, eos_token_id=eos, torch_dtype=dtype_name, dtype=dtype_name)
        with atomic_file(staging / "config.json") as tmp, open(tmp, "w", encoding="utf-8") as fp:
            json.dump(hf_config, fp, indent=2)
    print(
        f"Wrote {output_dir}: config.json, {shards} safetensors file(s) ({n_bytes / 1e6:.1f} MB, {dtype_name}), "
        f"generation_config.json and the tokenizer in {time.perf_counter() - t0:.1f}s"
    )
    difference = check_hf_tokenizer(checkpoint_dir, output_dir, _PROBE)
    if difference:
        print(
            f"Warning: transformers' tokenizer for {output_dir} encodes text differently from lit's tokenizer for "
            f"{checkpoint_dir} ({difference}); the model would not see the ids it was trained on.",
            file=sys.stderr,
        )


def convert_lit_checkpoint(
    checkpoint_path: Path,
    output_path: Path,
    config_path: Path,
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
) -> None:
    """lit-gpt's export: the Hugging Face Llama state dict of the lit weights `checkpoint_path` (described by
    `config_path`) in one torch file `output_path`, written whole or not at all."""
    checkpoint_path, output_path, config_path = Path(checkpoint_path), Path(output_path), Path(config_path)
    config = Config.from_file(config_path)
    state_dict = load_lit_state_dict(checkpoint_path)
    hint = f"{config_path} does not describe the weights in {checkpoint_path}: pass the config file beside them."
    check_weights({k: v.shape for k, v in state_dict.items()}, config, str(checkpoint_path), hint)
    target = getattr(torch, dtype) if dtype else None
    hf = {k: (v.to(target) if target else v).contiguous() for k, v in lit_to_hf(state_dict.items(), config)}
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(output_path) as tmp:
        torch.save(hf, tmp)
    print(f"Wrote {output_path}: the Hugging Face state dict of {checkpoint_path} ({len(hf)} tensors)")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(convert)
