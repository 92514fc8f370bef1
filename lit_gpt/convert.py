"""Hugging Face checkpoints and tokenizer files, read and written a tensor (or a group of tensors) at a time, and the
files each conversion writes.

The conversions (`scripts/convert_*.py`, `scripts/merge_lora.py`) meet three formats: a lit checkpoint directory
(`lit_gpt/weights.py`), a training checkpoint (`lit_gpt/training/checkpoint.py` reads its weights) and a Hugging Face
Llama directory, handled here: `config.json`, `model.safetensors` or `pytorch_model.bin` (sharded with an
`*.index.json` above a size threshold), `generation_config.json`, tokenizer files. The weight mapping between lit and
HF names lives in `lit_gpt/hf.py`; this module only moves tensors.
"""

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lit_gpt.data.separators import read_separators
from lit_gpt.files import atomic_file
from lit_gpt.tokenizer import Tokenizer, sentencepiece_to_tokenizers
from lit_gpt.trust import load_single_file
from lit_gpt.weights import TOKENIZER_FILES, copy_tokenizer_files

# the files a conversion writes (globs): what an earlier run of the same converter left in an output directory, that
# the loaders would pick up next to, or instead of, the new ones (transformers reads a stale `model.safetensors` rather
# than new shards, and a stale `tokenizer.json` rather than a new `tokenizer.model`)
_TOKENIZER_OUTPUTS = (*TOKENIZER_FILES, "added_tokens.json", "chat_template.jinja", "chat_template.json")
LIT_WEIGHT_OUTPUTS = (
    "lit_config.json",
    "lit_model.pth",
    "lit_model.pth.sealed",
    "lit_*.tmp",
    "separators.json",
    "separators.json*.tmp",
)
LIT_OUTPUTS = (*LIT_WEIGHT_OUTPUTS, *_TOKENIZER_OUTPUTS)
HF_OUTPUTS = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "shard-*.tmp",  # save_hf_weights' files before their rename
    *_TOKENIZER_OUTPUTS,
)


########################
# Hugging Face checkpoints
########################


def hf_checkpoint_tensors(checkpoint_dir: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) of an HF model directory, one file at a time: safetensors preferred over `.bin`, sharded
    (with `*.index.json`) or not."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (checkpoint_dir / index_name).is_file():
            with open(checkpoint_dir / index_name, encoding="utf-8") as fp:
                weight_map = json.load(fp)["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
            break
        if (checkpoint_dir / single_name).is_file():
            files = [single_name]
            break
    else:
        raise FileNotFoundError(
            f"No Hugging Face weights in {str(checkpoint_dir)!r}: looked for model.safetensors(.index.json) and "
            "pytorch_model.bin(.index.json). Download them with "
            "`python scripts/download.py --repo_id <org/name>`."
        )
    for file in files:
        if file.endswith(".safetensors"):
            yield from _safetensors_tensors(checkpoint_dir / file)
            continue
        hint = "A Hugging Face pytorch_model*.bin holds only tensors: download it again, or its safetensors."
        state = load_single_file(checkpoint_dir / file, pickle_hint=hint)  # refusals of planted and cut files
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{checkpoint_dir / file} is not a state dict (weight names -> tensors): {hint}")
        yield from state.items()


def _safetensors_tensors(path: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) of a safetensors file; one cut short, empty or not safetensors is refused in one line."""
    try:
        f = safe_open(str(path), framework="pt")
        names = list(f.keys())
    except Exception as e:  # SafetensorError: "header too large", "incomplete metadata", ...
        raise ValueError(_unreadable_safetensors(path, e)) from None
    for name in names:
        try:
            tensor = f.get_tensor(name)
        except Exception as e:
            raise ValueError(_unreadable_safetensors(path, e)) from None
        yield name, tensor


def _unreadable_safetensors(path: Path, e: Exception) -> str:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return (
        f"{path} cannot be read ({type(e).__name__}: {reason}): it is truncated or corrupt, not a whole safetensors "
        "file; download it again"
    )


def save_hf_weights(
    items: Iterable[Tuple[str, torch.Tensor]], output_dir: Path, max_shard_bytes: int
) -> Tuple[int, int, torch.dtype]:
    """Write `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`
    once the weights exceed `max_shard_bytes`; only one shard is held in memory. Returns (shards, bytes, dtype)."""
    shards: List[List[str]] = []
    weight_map: Dict[str, int] = {}
    shard: Dict[str, torch.Tensor] = {}
    shard_bytes = total = 0
    dtype = None

    def flush() -> None:
        save_file(shard, str(output_dir / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
        shards.append(list(shard))

    for name, tensor in items:
        if shard and shard_bytes + tensor.nbytes > max_shard_bytes:
            flush()
            shard, shard_bytes = {}, 0
        shard[name] = tensor.contiguous()
        weight_map[name] = len(shards)
        shard_bytes += tensor.nbytes
        total += tensor.nbytes
        dtype = dtype or tensor.dtype
    flush()

    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    umask = os.umask(0)
    os.umask(umask)
    for i, name in enumerate(names):
        os.replace(output_dir / f"shard-{i}.tmp", output_dir / name)
        # safetensors writes 0600: give it the mode open() gives (0644 under umask 022), for a shared folder's readers
        os.chmod(output_dir / name, 0o666 & ~umask)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
        with atomic_file(output_dir / "model.safetensors.index.json") as tmp, open(tmp, "w", encoding="utf-8") as fp:
            json.dump(index, fp, indent=2)
    return n, total, dtype


def save_tokenizer_files(
    source_dir: Path, output_dir: Path, block_size: int, add_bos_token: Optional[bool] = None
) -> List[str]:
    """The tokenizer of `source_dir` in `output_dir`, in files that `transformers.AutoTokenizer` loads with nothing
    but transformers installed (no sentencepiece, no protobuf). Returns the names written.

    A SentencePiece `tokenizer.model` is copied together with the `tokenizer.json` that encodes exactly like it
    (`lit_gpt.tokenizer.sentencepiece_to_tokenizers`), which replaces a `tokenizer.json` of `source_dir`: lit's
    `Tokenizer` encodes with `tokenizer.model`, and transformers' own conversion of it does not always agree
    (`LlamaTokenizer` splits "  two" into `▁▁ two`, SentencePiece into `▁▁ ▁two`). `tokenizer_config.json` (the
    source's, or one made from the tokenizer's special tokens) then names the generic `PreTrainedTokenizerFast`,
    which takes `tokenizer.json` as it is. A `tokenizer.json` without `tokenizer.model` is copied as it is. Either
    way `model_max_length` is the model's `block_size`. `add_bos_token` (the model's `Separators.bos`), when given,
    replaces the source's, in `tokenizer_config.json` and in what the `tokenizer.json` made from `tokenizer.model`
    puts before a text.
    """
    tokenizer = Tokenizer(source_dir)
    from_sentencepiece = tokenizer.backend == "sentencepiece"
    config_file = source_dir / "tokenizer_config.json"
    config = (
        json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else _tokenizer_config(tokenizer)
    )
    if add_bos_token is None:
        add_bos_token = tokenizer.add_bos_token
    else:
        config["add_bos_token"] = add_bos_token
    skip = ("tokenizer_config.json", "tokenizer.json") if from_sentencepiece else ("tokenizer_config.json",)
    written = copy_tokenizer_files(source_dir, output_dir, skip)
    if from_sentencepiece:
        fast = sentencepiece_to_tokenizers(source_dir / "tokenizer.model", add_bos_token=add_bos_token)
        fast.save(str(output_dir / "tokenizer.json"))
        # split_special_tokens: a literal "<s>" in a text is text, as SentencePiece encodes it
        config.update(tokenizer_class="PreTrainedTokenizerFast", split_special_tokens=True)
        written.append("tokenizer.json")
    config["model_max_length"] = block_size
    with open(output_dir / "tokenizer_config.json", "w", encoding="utf-8") as fp:
        json.dump(config, fp, indent=2)
    return [*written, "tokenizer_config.json"]


def _tokenizer_config(tokenizer) -> dict:
    """A `tokenizer_config.json` for a tokenizer directory that has none: its special tokens and `add_bos_token`."""
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    if tokenizer.backend == "sentencepiece":
        ids["unk"] = tokenizer.processor.unk_id()
        to_token = tokenizer.processor.id_to_piece
    else:
        to_token = tokenizer.processor.id_to_token
    special = {f"{k}_token": to_token(i) for k, i in ids.items() if i is not None and 0 <= i < tokenizer.vocab_size}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in special.items() if v is not None},
        "add_bos_token": tokenizer.add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def save_hf_tokenizer(checkpoint_dir: Path, output_dir: Path, block_size: int) -> Tuple[int, int]:
    """The tokenizer files of `save_tokenizer_files`, and `generation_config.json`. Returns the (bos, eos) ids, which
    `config.json` repeats. The tokenizer's `add_bos_token` is whether the model was trained with `bos` before each
    document (`lit_gpt.data.separators.read_separators`): what a Hugging Face directory says of it (and what
    `scripts/convert_hf_checkpoint.py` reads back)."""
    tokenizer = Tokenizer(checkpoint_dir)
    separators = read_separators(checkpoint_dir)
    written = save_tokenizer_files(checkpoint_dir, output_dir, block_size, add_bos_token=separators.bos)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else 1
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else 2
    if "generation_config.json" not in written:
        with open(output_dir / "generation_config.json", "w", encoding="utf-8") as fp:
            json.dump({"bos_token_id": bos, "eos_token_id": eos, "transformers_version": _transformers_version()}, fp)
    return bos, eos


def _transformers_version() -> str:
    try:
        return version("transformers")
    except Exception:
        return "4.45.0"


def check_hf_tokenizer(checkpoint_dir: Path, output_dir: Path, text: str) -> Optional[str]:
    """None if transformers' tokenizer for `output_dir` encodes `text` like ours for `checkpoint_dir` (or if
    transformers is not installed), else a description of the difference."""
    try:
        from transformers import AutoTokenizer  # optional and heavy: only to compare the tokenizers
    except ImportError:
        return None
    ours = Tokenizer(checkpoint_dir).encode_ids(text, parse_special=True)
    theirs = AutoTokenizer.from_pretrained(str(output_dir)).encode(text, add_special_tokens=False)
    if ours == theirs:
        return None
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"token {first}: ours {ours[first : first + 5]}, transformers' {theirs[first : first + 5]}"
