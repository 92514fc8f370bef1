"""Convert a Hugging Face Llama checkpoint directory to lit's format, for continued pretraining or inference.

    python scripts/convert_hf_checkpoint.py \
        --checkpoint_dir checkpoints/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T

Reads `config.json` and the weights (`model.safetensors` or `pytorch_model.bin`, sharded with an index or not) one
file and one tensor at a time, maps them with `lit_gpt/hf.py` and writes `lit_config.json`, `lit_model.pth` and
`separators.json` next to them (or into `--output_dir`, with the tokenizer files copied). `separators.json` records
the document separators the model was trained with, as its tokenizer says (`lit_gpt/data/separators.py`; TinyLlama,
Llama-2: bos before each document). `pretrain/tinyllama.py --initial_checkpoint_dir`
starts from the result.
"""

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.config import Config, check_same_architecture  # noqa: E402
from lit_gpt.convert import LIT_OUTPUTS, LIT_WEIGHT_OUTPUTS, hf_checkpoint_tensors  # noqa: E402
from lit_gpt.data.separators import separators_of_tokenizer, write_separators  # noqa: E402
from lit_gpt.files import recover_replaced, staged_output_dir  # noqa: E402
from lit_gpt.hf import config_from_hf, hf_to_lit  # noqa: E402
from lit_gpt.weights import check_weights, copy_tokenizer_files, save_lit_checkpoint  # noqa: E402


def convert(
    checkpoint_dir: Path,
    model_name: Optional[str] = None,
    output_dir: Optional[Path] = None,
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
    overwrite: bool = False,
) -> None:
    """Convert a Hugging Face Llama checkpoint directory to `lit_config.json` + `lit_model.pth`.

    Args:
        checkpoint_dir: A downloaded Hugging Face model directory with `config.json` and the weights.
        model_name: Registered lit config to use (`tiny-llama-1.1b`); by default the config is read from
            `config.json`, named after the directory.
        output_dir: Where to write the lit files; by default `checkpoint_dir` itself.
        dtype: Cast the weights to this dtype; by default they keep the dtype they were saved in.
        overwrite: Replace the `lit_config.json`, `lit_model.pth` (and, in another `output_dir`, the tokenizer
            files) that an earlier run of this script wrote there. Files of those names that it did not write are
            refused, never deleted, and so is an `output_dir` that lies in or holds `checkpoint_dir`.
    """
    # the lit files are swapped in beside the Hugging Face files by renaming the whole folder: one killed between the
    # two renames left it as `.<name>.old-<pid>`, put back here before it is looked for
    recover_replaced(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(checkpoint_dir)!r} has no config.json; pass a Hugging Face model directory, for example one "
            "downloaded with `python scripts/download.py --repo_id TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T`"
        )
    with open(checkpoint_dir / "config.json", encoding="utf-8") as fp:
        hf_config = json.load(fp)
    from_json = config_from_hf(hf_config, name=checkpoint_dir.name)
    if model_name is None:
        config = from_json
    else:
        config = Config.from_name(model_name)
        hint = "pass the matching --model_name or leave it out to use config.json"
        check_same_architecture(config, from_json, f"{checkpoint_dir}/config.json", hint)
    output_dir = output_dir or checkpoint_dir
    # by default the lit files go next to the Hugging Face files (and the tokenizer stays where it is), but nowhere
    # else in or around them
    beside = output_dir.resolve() == checkpoint_dir.resolve()
    outputs = LIT_WEIGHT_OUTPUTS if beside else LIT_OUTPUTS
    inputs = {} if beside else {"--checkpoint_dir": checkpoint_dir}
    t0 = time.perf_counter()
    target = getattr(torch, dtype) if dtype else None
    tied = bool(hf_config.get("tie_word_embeddings", False))
    items = hf_to_lit(hf_checkpoint_tensors(checkpoint_dir), config, tie_word_embeddings=tied)
    state_dict = {k: v.to(target) if target else v for k, v in items}
    if config.tie_embeddings:  # one weight under both names, as GPT(config).state_dict() has it (and saves it once)
        state_dict["lm_head.weight"] = state_dict.get("transformer.wte.weight")
    # the architecture was checked against config.json above: a mismatch here is in the weight files
    hint = "Its weight files do not match its config.json: download it again (an interrupted or mixed download)."
    check_weights({k: v.shape for k, v in state_dict.items()}, config, str(checkpoint_dir), hint)
    separators = separators_of_tokenizer(checkpoint_dir)
    # beside the Hugging Face files, the new folder holds hard links to them: the swap never copies or loses them
    script = "convert_hf_checkpoint.py"
    # the room it needs before it starts, and what a full disk's message says: a tied head's tensor is written once
    needed = sum({(t.data_ptr(), t.nbytes): t.nbytes for t in state_dict.values()}.values())
    with staged_output_dir(output_dir, overwrite, outputs, script, inputs, False, needed) as staging:
        copied = copy_tokenizer_files(checkpoint_dir, staging) if not beside else []
        write_separators(staging, separators)
        save_lit_checkpoint(state_dict, config, staging)
    n_bytes = needed
    also = f" (and copied {', '.join(copied)})" if copied else ""
    if tied and not config.tie_embeddings:  # --model_name of an untied registry entry
        also += "; the tied embedding is copied into lm_head.weight, which continued training updates on its own"
    print(
        f"Wrote {output_dir}/lit_config.json ({config.name}), separators.json ({separators}) and lit_model.pth "
        f"({n_bytes / 1e6:.1f} MB){also} "
        f"in {time.perf_counter() - t0:.1f}s"
    )


# lit-gpt's name; its keyword arguments (checkpoint_dir, model_name, dtype) are these
convert_hf_checkpoint = convert


def copy_weights_hf_llama(
    config: Config,
    qkv_weights: Dict[int, List[Optional[torch.Tensor]]],
    state_dict: Dict[str, torch.Tensor],
    hf_weights: Dict[str, torch.Tensor],
    saver: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
) -> None:
    """lit-gpt's step of its conversion, called once per weight file: the lit weights of `hf_weights` (Hugging Face
    Llama names) go into `state_dict`, cast to `dtype` and stored early by `saver` (`lit_gpt.utils.incremental_save`)
    when given. A layer's q, k and v wait in `qkv_weights` (layer -> [q, k, v]) until all three were seen, which can
    be in different files."""
    items = []
    for name, tensor in hf_weights.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", name)
        if m is None:
            items.append((name, tensor))
            continue
        parts = qkv_weights.setdefault(int(m.group(1)), [None, None, None])
        parts["qkv".index(m.group(2))] = tensor
    for layer, parts in list(qkv_weights.items()):
        if all(p is not None for p in parts):
            items += [(f"model.layers.{layer}.self_attn.{n}_proj.weight", p) for n, p in zip("qkv", parts)]
            del qkv_weights[layer]
    for name, tensor in hf_to_lit(items, config):
        tensor = tensor.to(dtype) if dtype is not None else tensor
        state_dict[name] = saver.store_early(tensor) if saver is not None else tensor


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(convert)
