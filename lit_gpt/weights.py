"""A lit checkpoint directory: `lit_config.json` (the model's `Config`), `lit_model.pth` (a plain state dict, the names
of `GPT(config).state_dict()`), the tokenizer files, and `separators.json` (`lit_gpt/data/separators.py`).

Read by generation, evaluation, finetuning and `--initial_checkpoint_dir`; written by the conversions and by
`scripts/merge_lora.py`. `check_weights` compares a checkpoint's names and shapes with a model's before any tensor is
loaded; `strip_wrapper_prefixes` takes off the module names that compilation, Fabric, DDP and activation
checkpointing put around a model's own.
"""

import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from lit_gpt.config import Config
from lit_gpt.files import atomic_file
from lit_gpt.model import GPT

# copied along with the weights; `generation_config.json` carries bos/eos ids
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


# module names that torch.compile, Fabric, DDP and activation checkpointing wrap around the model
_WRAPPER_SEGMENTS = {"_orig_mod", "_forward_module", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"}


def strip_wrapper_prefixes(name: str) -> str:
    """`_forward_module._orig_mod.transformer.wte.weight` -> `transformer.wte.weight`."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_SEGMENTS]
    if parts and parts[0] == "module":  # DDP
        parts = parts[1:]
    return ".".join(parts)


def check_weights(shapes: Dict[str, torch.Size], config: Config, source: str, hint: str) -> None:
    """Raise if the weight names and shapes in `shapes` are not exactly those of `GPT(config)`; `hint` (what the
    caller's user can do about it) ends the message."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    for key, shape in expected.items():
        if key not in shapes:
            raise ValueError(f"{source} has no weight {key!r}, which {config.name!r} needs. {hint}")
        if tuple(shapes[key]) != tuple(shape):
            raise ValueError(
                f"{source} does not fit {config.name!r}: {key!r} has shape {tuple(shapes[key])} in the checkpoint "
                f"but {tuple(shape)} in the model. {hint}"
            )
    for key in shapes:
        if key not in expected:
            raise ValueError(f"{source} has a weight {key!r} that {config.name!r} does not have. {hint}")


def lit_checkpoint_files(checkpoint_dir: Path) -> Tuple[Config, Path]:
    """The config and the weight file of a lit checkpoint directory, with an error that says how to make one."""
    checkpoint_dir = Path(checkpoint_dir)
    model_file = checkpoint_dir / "lit_model.pth"
    if not model_file.is_file() and checkpoint_dir.is_dir() and any(checkpoint_dir.glob("step-*.pth")):
        raise FileNotFoundError(  # an --out_dir of training, taken for the lit checkpoint made from it
            f"{str(checkpoint_dir)!r} is the output folder of a training run (step-*.pth checkpoints), not a lit "
            "checkpoint directory (lit_model.pth). Make one from a checkpoint of pretrain/tinyllama.py or "
            "finetune/full.py with `python scripts/convert_pretrained_checkpoint.py`; fold one of finetune/lora.py "
            "into its base with `python scripts/merge_lora.py`."
        )
    if not model_file.is_file():
        raise FileNotFoundError(
            f"{str(model_file)!r} does not exist. Make a lit checkpoint directory from a training checkpoint with "
            "`python scripts/convert_pretrained_checkpoint.py` or from a Hugging Face one with "
            "`python scripts/convert_hf_checkpoint.py`."
        )
    if not (checkpoint_dir / "lit_config.json").is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has lit_model.pth but no lit_config.json next to it")
    return Config.from_file(checkpoint_dir / "lit_config.json"), model_file


def load_lit_state_dict(model_file: Path) -> Dict[str, torch.Tensor]:
    """A lit state dict, memory-mapped: tensors are read from disk when used."""
    return torch.load(model_file, mmap=True, weights_only=True, map_location="cpu")


def save_lit_checkpoint(state_dict: Dict[str, torch.Tensor], config: Config, output_dir: Path) -> None:
    """`lit_config.json` and then `lit_model.pth`, the tensors in the order of `GPT(config).state_dict()`, each
    written whole or not at all (`atomic_file`): a `lit_model.pth` there is a complete conversion."""
    with torch.device("meta"):
        order = list(GPT(config).state_dict())
    with atomic_file(output_dir / "lit_config.json") as tmp:
        config.to_file(tmp)
    with atomic_file(output_dir / "lit_model.pth") as tmp:
        torch.save({k: state_dict[k] for k in order}, tmp)


def copy_tokenizer_files(source_dir: Path, output_dir: Path, skip: Tuple[str, ...] = ()) -> List[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if name in skip:
            continue
        if (source_dir / name).is_file() and (source_dir / name).resolve() != (output_dir / name).resolve():
            shutil.copyfile(source_dir / name, output_dir / name)
            copied.append(name)
    return copied
