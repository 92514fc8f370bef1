"""A lit checkpoint directory: `lit_config.json` (the model's `Config`; lit-gpt's keys, or litgpt's `model_config.yaml`,
are read too), `lit_model.pth` (a plain state dict, the names
of `GPT(config).state_dict()`), the tokenizer files, and `separators.json` (`lit_gpt/data/separators.py`).

Read by generation, evaluation, finetuning and `--initial_checkpoint_dir`; written by the conversions and by
`scripts/merge_lora.py`; `lit_model.pth` carries its SHA-256 (`lit_gpt/files.py:seal_zip`), and `lit_model.pth.sealed`
beside it says so. `check_weights` compares a checkpoint's names and shapes with a model's before any tensor is
loaded; `strip_wrapper_prefixes` takes off the module names that compilation, Fabric, DDP and activation
checkpointing put around a model's own.
"""

import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from lit_gpt.config import Config, checkpoint_config_file
from lit_gpt.files import atomic_file, check_seal, seal_zip, sealed_mark, write_sealed_mark
from lit_gpt.hf import fuse_litgpt_qkv
from lit_gpt.model import GPT
from lit_gpt.trust import is_distributed_checkpoint, load_single_file, training_hparams

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
    if checkpoint_dir.is_file() or is_distributed_checkpoint(checkpoint_dir):
        what, remedy = _made_into_lit_checkpoint(checkpoint_dir)
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} is {what}: {remedy}")
    steps = sorted(checkpoint_dir.glob("step-*.pth")) if checkpoint_dir.is_dir() else []
    if not model_file.is_file() and steps:  # an --out_dir of training, taken for the lit checkpoint made from it
        _, remedy = _made_into_lit_checkpoint(steps[-1])
        raise FileNotFoundError(
            f"{str(checkpoint_dir)!r} is the output folder of a training run (step-*.pth checkpoints), not a lit "
            f"checkpoint directory (lit_model.pth); for its newest checkpoint, {remedy}"
        )
    if not model_file.is_file():
        raise FileNotFoundError(
            f"{str(model_file)!r} does not exist. Make a lit checkpoint directory from a training checkpoint with "
            "`python scripts/convert_pretrained_checkpoint.py` or from a Hugging Face one with "
            "`python scripts/convert_hf_checkpoint.py`."
        )
    config_file = checkpoint_config_file(checkpoint_dir)
    if config_file is None:
        raise FileNotFoundError(
            f"{str(checkpoint_dir)!r} has lit_model.pth but no lit_config.json (or litgpt's model_config.yaml) "
            "next to it"
        )
    return Config.from_file(config_file), model_file


def _made_into_lit_checkpoint(path: Path) -> Tuple[str, str]:
    """(what the file or sharded checkpoint `path` is, the command that makes a lit checkpoint directory of it): for a
    training checkpoint, with the model and the tokenizer it records."""
    if path.name == "lit_model.pth" or checkpoint_config_file(path.parent) is not None:
        return f"a file in the lit checkpoint directory {str(path.parent)!r}", "pass the directory"
    try:
        hparams = training_hparams(path)
    except (ValueError, OSError):  # not a torch file, or one of another tool's (pickled objects)
        hparams = {}
    quoted = shlex.quote(str(path))
    if "lora" in hparams:
        base = shlex.quote(str((hparams.get("base") or {}).get("checkpoint_dir", "<its base checkpoint>")))
        return "a LoRA checkpoint of finetune/lora.py (an adapter without the base weights), not a lit checkpoint", (
            f"fold it into its base with `python scripts/merge_lora.py --checkpoint_dir {base} --lora_checkpoint "
            f"{quoted} --output_dir {base}-lora`, then pass {base}-lora"
        )
    if not hparams and not is_distributed_checkpoint(path) and not re.fullmatch(r"step-\d+\.pth", path.name):
        return "a file, not a lit checkpoint directory", (
            "pass a directory with lit_config.json, lit_model.pth and the tokenizer files, as "
            "`python scripts/convert_pretrained_checkpoint.py` (from a training checkpoint) or "
            "`python scripts/convert_hf_checkpoint.py` (from a Hugging Face one) write"
        )
    # the tokenizer a run recorded: finetune/full.py's base checkpoint, or pretraining's --initial_checkpoint_dir
    finetuned = "template" in hparams
    recorded = hparams.get("checkpoint_dir" if finetuned else "initial_checkpoint_dir")
    if recorded and any((Path(recorded) / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        tokenizer = shlex.quote(str(recorded))
    else:
        tokenizer = "<the tokenizer its data was prepared with>"
    name = (hparams.get("model_config") or {}).get("name")
    config = "" if name else " --config_name <the model name it was trained as>"
    if finetuned and recorded:
        output = shlex.quote(f"{recorded}-full")  # beside the base it was finetuned from
    else:
        output = f"checkpoints/lit-{name or '<model name>'}"
    # a file that records no run (another tool's, or unreadable) may be an adapter as well
    lora = "" if hparams else "; an adapter of finetune/lora.py is merged into its base: `python scripts/merge_lora.py`"
    return "a training checkpoint, not a lit checkpoint directory", (
        f"convert it into one with `python scripts/convert_pretrained_checkpoint.py --checkpoint_file {quoted} "
        f"--tokenizer_dir {tokenizer}{config} --output_dir {output}`, then pass {output}{lora}"
    )


def load_lit_state_dict(model_file: Path) -> Dict[str, torch.Tensor]:
    """A lit state dict, memory-mapped: tensors are read from disk when used. Checked against the SHA-256 that
    `save_lit_checkpoint` writes with it (one written before, or by another tool, has none and is read as it is; one
    whose mark `lit_model.pth.sealed` says it had one and has none is refused). litgpt's (>= 0.5) fused `attn.qkv`
    projections come out in lit-gpt's names and layout (`attn.attn`), laid out as the config file beside
    `model_file` says."""
    mark = sealed_mark(model_file)
    check_seal(model_file, f"{mark.name} beside it says it was written with one" if mark.is_file() else None)
    hint = "A lit checkpoint holds only tensors: make it again with scripts/convert_*_checkpoint.py."
    state = load_single_file(model_file, pickle_hint=hint)  # one-line refusals of planted, cut or foreign files
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{model_file} is not a lit state dict (weight names -> tensors): {hint}")
    litgpt_names = [k for k in state if k.endswith((".attn.qkv.weight", ".attn.qkv.bias"))]
    config_file = checkpoint_config_file(Path(model_file).parent)
    if litgpt_names and config_file is not None:
        config = Config.from_file(config_file)
        state = {k.replace(".attn.qkv.", ".attn.attn."): fuse_litgpt_qkv(v, config) if k in litgpt_names else v
                 for k, v in state.items()}  # fmt: skip
    return state


def save_lit_checkpoint(state_dict: Dict[str, torch.Tensor], config: Config, output_dir: Path) -> None:
    """`lit_config.json` and then `lit_model.pth`, the tensors in the order of `GPT(config).state_dict()`, each
    written whole or not at all (`atomic_file`): a `lit_model.pth` there is a complete conversion. A tied head
    (`config.tie_embeddings`) is the embedding's tensor under both names, which `torch.save` writes once."""
    with torch.device("meta"):
        order = list(GPT(config).state_dict())
    head, embedding = state_dict.get("lm_head.weight"), state_dict.get("transformer.wte.weight")
    if config.tie_embeddings and head is not None and embedding is not None and head is not embedding:
        if not torch.equal(head, embedding):
            raise ValueError(
                f"{config.name} ties its output head to the token embedding (tie_embeddings), but lm_head.weight and "
                "transformer.wte.weight differ in these weights: they were trained apart, by a version of lit_gpt "
                "that lost the tie when it initialized the model; train them again with this one"
            )
        state_dict = {**state_dict, "lm_head.weight": embedding}
    with atomic_file(output_dir / "lit_config.json") as tmp:
        config.to_file(tmp)
    write_sealed_mark(output_dir / "lit_model.pth")  # first: a lit_model.pth there always has it
    with atomic_file(output_dir / "lit_model.pth") as tmp:
        torch.save({k: state_dict[k] for k in order}, tmp)
        seal_zip(tmp)  # its SHA-256, which load_lit_state_dict checks


def copy_tokenizer_files(source_dir: Path, output_dir: Path, skip: Tuple[str, ...] = ()) -> List[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if name in skip:
            continue
        if (source_dir / name).is_file() and (source_dir / name).resolve() != (output_dir / name).resolve():
            shutil.copyfile(source_dir / name, output_dir / name)
            copied.append(name)
    return copied
