"""Checkpoint files on disk, read and written a tensor (or a group of tensors) at a time.

Three formats meet here:
- a lit checkpoint directory: `lit_config.json`, `lit_model.pth` (a plain state dict) and tokenizer files;
- a Hugging Face Llama directory: `config.json`, `model.safetensors` or `pytorch_model.bin` (sharded with an
  `*.index.json` above a size threshold), `generation_config.json`, tokenizer files;
- a training checkpoint written by `fabric.save(path, {"model": model, "optimizer": ..., ...})`: one `torch.save`
  file, or a torch.distributed.checkpoint directory (`*.distcp` files, `.metadata` and Fabric's `meta.pt`).

The weight mapping between lit and HF names lives in `lit_gpt/hf.py`; this module only moves tensors.
"""

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import warnings
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.separators import DEFAULT_SEPARATORS, Separators

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


def parse_size(size: Union[str, int]) -> int:
    """`"5GB"`, `"500MB"`, `"2GiB"` or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", size, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"Cannot read the size {size!r}; write it like '5GB', '500MB' or '2GiB'")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base**power)


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


# the files a conversion writes (globs): what an earlier run of the same converter left in an output directory, that
# the loaders would pick up next to, or instead of, the new ones (transformers reads a stale `model.safetensors` rather
# than new shards, and a stale `tokenizer.json` rather than a new `tokenizer.model`)
_TOKENIZER_OUTPUTS = (*TOKENIZER_FILES, "added_tokens.json", "chat_template.jinja", "chat_template.json")
LIT_WEIGHT_OUTPUTS = ("lit_config.json", "lit_model.pth", "lit_*.tmp", "separators.json", "separators.json*.tmp")
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
# written into an output directory before any other file: which converter owns the files of its outputs there
OUTPUT_RECORD = ".lit_gpt_conversion.json"


def prepare_output_dir(
    output_dir: Path,
    overwrite: bool,
    outputs: Tuple[str, ...],
    script: str,
    inputs: Dict[str, Path],
    require_empty: bool = True,
) -> None:
    """Make `output_dir` ready for `script`, a converter that writes files matching the globs `outputs` and then
    calls `finish_output_dir`.

    Refused: an `output_dir` that is, lies inside or holds one of `inputs` (flag -> path); without `overwrite`, a
    non-empty one (with `require_empty`) or one that holds a file of `outputs`; with `overwrite`, one that holds a
    file of `outputs` that `script` did not write there: `OUTPUT_RECORD` does not name `script`, or names the files
    of its finished conversion and this one is not among them or was changed since (size, modification time), as
    another tool's `save_pretrained` into the export changes it. Otherwise the files of `outputs` are deleted, so that
    nothing of the earlier conversion is loaded with the new one, other files are kept, and the record is written:
    nothing but the converter's own earlier output is ever deleted.
    """
    check_apart_from_inputs(output_dir, inputs)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {str(output_dir)!r} exists and is a file; pass a directory")
    stale = sorted({p for pattern in outputs for p in output_dir.glob(pattern) if p.is_file() or p.is_symlink()})
    nonempty = output_dir.is_dir() and any(output_dir.iterdir()) if require_empty else bool(stale)
    if nonempty and not overwrite:
        raise FileExistsError(
            f"--output_dir {str(output_dir)!r} is not empty; pass --overwrite true to replace the files of an earlier "
            f"conversion by {script} in it, or choose another directory"
        )
    record = _output_record(output_dir)
    mine = record.get(script)
    # the files of a finished conversion; None while one runs (a killed one: its partial files are all its own)
    written = mine.get("files") if isinstance(mine, dict) else None
    foreign = [p for p in stale if mine is None or (written is not None and written.get(p.name) != _fingerprint(p))]
    if foreign:
        names = ", ".join(p.name for p in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        why = f"no {OUTPUT_RECORD} of it there" if mine is None else f"or changed since, says {OUTPUT_RECORD}"
        raise FileExistsError(
            f"--output_dir {str(output_dir)!r} holds {names}, which {script} did not write ({why}): --overwrite true "
            "replaces only its own earlier output. Move them away or choose another directory"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in stale:
            path.unlink()
        _write_output_record(output_dir, {**record, script: {"outputs": list(outputs), "files": None}})
    except OSError as e:  # a read-only disk, a folder of another user, a full disk: before any work
        raise ValueError(
            f"--output_dir {str(output_dir)!r} cannot be written ({e.strerror or e}); pass a directory on a "
            "writable disk with room for the output"
        ) from None


def finish_output_dir(output_dir: Path, outputs: Tuple[str, ...], script: str) -> None:
    """Record in `OUTPUT_RECORD` the files of `outputs` that `script` has now written in `output_dir` (after
    `prepare_output_dir`), so that a later `--overwrite` deletes them only as they are."""
    files = {p.name: _fingerprint(p) for pattern in outputs for p in output_dir.glob(pattern) if p.is_file()}
    _write_output_record(output_dir, {**_output_record(output_dir), script: {"outputs": list(outputs), "files": files}})


def _fingerprint(path: Path) -> List[int]:
    stat = path.lstat()
    return [stat.st_size, stat.st_mtime_ns]


def _write_output_record(output_dir: Path, record: dict) -> None:
    with atomic_file(output_dir / OUTPUT_RECORD) as tmp, open(tmp, "w", encoding="utf-8") as fp:
        json.dump(record, fp, indent=2)


def _output_record(output_dir: Path) -> Dict[str, object]:
    """script -> {"outputs": its output globs, "files": name -> fingerprint, None until it finished}, of the
    converters that wrote into `output_dir` ({} if none did; an older record's script -> globs, as unfinished)."""
    try:
        record = json.loads((output_dir / OUTPUT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_apart_from_inputs(output_dir: Path, inputs: Dict[str, Path]) -> None:
    """Refuse an `output_dir` that is, lies inside or holds one of `inputs` (flag -> path), where writing or
    replacing files could destroy an input."""
    out = output_dir.resolve()
    for flag, path in inputs.items():
        source = Path(path).resolve()
        relation = "is" if out == source else "lies inside" if source in out.parents else None
        relation = relation or ("holds" if out in source.parents else None)
        if relation:
            raise ValueError(
                f"--output_dir {str(output_dir)!r} {relation} {flag} {str(path)!r}: the conversion could overwrite "
                f"or delete its input. Choose an --output_dir outside {flag} (and not holding it)"
            )


def copy_tokenizer_files(source_dir: Path, output_dir: Path, skip: Tuple[str, ...] = ()) -> List[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if name in skip:
            continue
        if (source_dir / name).is_file() and (source_dir / name).resolve() != (output_dir / name).resolve():
            shutil.copyfile(source_dir / name, output_dir / name)
            copied.append(name)
    return copied


def save_lit_checkpoint(state_dict: Dict[str, torch.Tensor], config: Config, output_dir: Path) -> None:
    """`lit_config.json` and then `lit_model.pth`, the tensors in the order of `GPT(config).state_dict()`, each
    written whole or not at all (`atomic_file`): a `lit_model.pth` there is a complete conversion."""
    with torch.device("meta"):
        order = list(GPT(config).state_dict())
    with atomic_file(output_dir / "lit_config.json") as tmp:
        config.to_file(tmp)
    with atomic_file(output_dir / "lit_model.pth") as tmp:
        torch.save({k: state_dict[k] for k in order}, tmp)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to, renamed onto `path` once written and synced to disk: a kill or a
    full disk leaves no truncated file under the final name, and no temporary file either when it raises.

    The name is this write's own (`path.name.<pid>.<random>.tmp`): two conversions into one directory never write
    or rename each other's file, and a link left under a fixed name cannot lead the write outside the directory."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    if not (checkpoint_dir / "lit_config.json").is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has lit_model.pth but no lit_config.json next to it")
    return Config.from_file(checkpoint_dir / "lit_config.json"), model_file


def _made_into_lit_checkpoint(path: Path) -> Tuple[str, str]:
    """(what the file or sharded checkpoint `path` is, the command that makes a lit checkpoint directory of it): for a
    training checkpoint, with the model and the tokenizer it records."""
    if path.name == "lit_model.pth" or (path.parent / "lit_config.json").is_file():
        return f"a file in the lit checkpoint directory {str(path.parent)!r}", "pass the directory"
    try:
        hparams = _training_hparams(path)
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
    """A lit state dict, memory-mapped: tensors are read from disk when used."""
    return torch.load(model_file, mmap=True, weights_only=True, map_location="cpu")


########################
# Training checkpoints
########################


def _torch_load(path: Path, weights_only: bool = True) -> dict:
    try:
        return torch.load(path, mmap=True, weights_only=weights_only, map_location="cpu")
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # a legacy (non-zip) file cannot be mapped
        return torch.load(path, weights_only=weights_only, map_location="cpu")


def is_distributed_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def training_checkpoint_shapes(path: Path, trust_pickle: bool = False) -> Dict[str, torch.Size]:
    """Names (wrapper prefixes stripped) and shapes of the model weights in a training checkpoint, read without
    loading any tensor."""
    if is_distributed_checkpoint(path):
        return {name: meta.size for name, (_, meta) in _dcp_model_entries(path, trust_pickle).items()}
    return {name: t.shape for name, t in _single_file_model(path, trust_pickle).items()}


def training_checkpoint_tensors(
    path: Path, group_bytes: int = 2**30, trust_pickle: bool = False
) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) for every model weight of a training checkpoint, wrapper prefixes stripped.

    A single file is memory-mapped. A distributed checkpoint is consolidated without a process group: the DCP
    metadata lists every weight and its global shape, and the weights are read in groups of about `group_bytes`,
    so that the optimizer state is never read and only one group is in flight at a time. Its `.metadata` pickle is
    read without running code unless `trust_pickle` (`lit_gpt.checkpoint.DCPReader`).
    """
    if not is_distributed_checkpoint(path):
        yield from _single_file_model(path, trust_pickle).items()
        return
    from lit_gpt.checkpoint import dcp_load

    entries = _dcp_model_entries(path, trust_pickle)
    group: Dict[str, torch.Tensor] = {}
    size = 0
    names = list(entries)
    for i, name in enumerate(names):
        fqn, meta = entries[name]
        group[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype)
        size += group[fqn].nbytes
        if size >= group_bytes or i == len(names) - 1:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
                dcp_load(group, path, trust_pickle, no_dist=True)
            for key, tensor in group.items():
                yield strip_wrapper_prefixes(key[len("model.") :]), tensor
            group, size = {}, 0


def training_checkpoint_config(path: Path, config_name: Optional[str] = None, trust_pickle: bool = False) -> Config:
    """The model config a training checkpoint was trained with.

    `pretrain/tinyllama.py` saves it as `hparams["model_config"]` (with the run's `--block_size`): in the file of a
    single-file checkpoint, in `meta.pt` of a sharded one. `config_name`, when given, is checked against it. A
    checkpoint without it (an older one, or another tool's) needs `config_name`, which is looked up in the registry.
    """
    hparams = _training_hparams(path, trust_pickle)
    saved = hparams.get("model_config")
    if saved is None:
        if config_name is None:
            raise ValueError(
                f"{str(path)!r} does not record the model config it was trained with (no hparams['model_config']); "
                "pass the registered name it was trained as, for example --config_name tiny-llama-1.1b"
            )
        return Config.from_name(config_name)
    try:
        config = Config(**saved)
    except TypeError as e:  # written by a version of `Config` with other fields
        known = set(Config.__dataclass_fields__)
        raise ValueError(
            f"{str(path)!r} records a model config this version of lit_gpt cannot read ({e}; unknown fields: "
            f"{sorted(set(saved) - known)}). Convert it with the version that trained it."
        ) from None
    if config_name is not None and config_name not in (config.name, hparams.get("model_name")):
        raise ValueError(
            f"--config_name {config_name!r} does not match {str(path)!r}, which was trained as {config.name!r}; "
            f"pass --config_name {config.name} or leave it out to use the config saved in the checkpoint"
        )
    return config


def training_checkpoint_separators(path: Path, trust_pickle: bool = False) -> Separators:
    """The document separators a training checkpoint was trained with (`hparams["separators"]`, which
    `pretrain/tinyllama.py` reads from the data's `prepare.json`); a checkpoint without them was trained before they
    were recorded, on data prepared with the default (eos after each document)."""
    recorded = _training_hparams(path, trust_pickle).get("separators")
    return DEFAULT_SEPARATORS if recorded is None else Separators.from_dict(recorded, f"{path}'s hparams")


def _training_hparams(path: Path, trust_pickle: bool = False) -> dict:
    """The `hparams` entry of a training checkpoint, or {} when it has none; no weight is read."""
    if is_distributed_checkpoint(path):
        meta = path / "meta.pt"  # Fabric's file for everything besides the sharded tensors
        state = torch.load(meta, weights_only=not trust_pickle, map_location="cpu") if meta.is_file() else {}
    else:
        state = _load_single_file(path, trust_pickle)
    hparams = state.get("hparams") if isinstance(state, dict) else None
    return hparams if isinstance(hparams, dict) else {}


def _single_file_model(path: Path, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    state = _load_single_file(path, trust_pickle)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} is neither a state dict nor a training checkpoint with the state dict under 'model'"
        )
    return {strip_wrapper_prefixes(k): v for k, v in state.items()}


def _load_single_file(path: Path, trust_pickle: bool = False) -> object:
    """The whole object of a single-file checkpoint, memory-mapped."""
    if not path.is_file():
        what = "a directory without a .metadata file" if path.is_dir() else "missing"
        raise FileNotFoundError(
            f"The checkpoint {str(path)!r} is {what}: pass a `step-*.pth` file or a sharded checkpoint directory "
            "written by `fabric.save` (it holds *.distcp files and .metadata)"
        )
    try:
        return _torch_load(path)
    except Exception as e:
        if "weights_only" not in str(e):  # a file cut short or overwritten: EOFError, "invalid header", OSError 22
            raise _unreadable(path, e) from None
        if not trust_pickle:  # pickled objects (hyperparameters of other tools, ...) that weights_only refuses
            raise ValueError(
                f"{str(path)!r} holds pickled Python objects besides tensors, which loading it safely "
                "(`torch.load(weights_only=True)`) refuses: unpickling them can run arbitrary code. If the file "
                "comes from a source you trust, pass --trust_pickle true."
            ) from e
    try:
        return _torch_load(path, weights_only=False)
    except Exception as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> ValueError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ValueError(
        f"{path} cannot be read ({type(e).__name__}: {reason}): it is truncated or corrupt, not a whole torch.save "
        "file (a copy or a save cut short)"
    )


def _dcp_model_entries(path: Path, trust_pickle: bool = False) -> Dict[str, tuple]:
    """stripped name -> (name in the checkpoint, TensorStorageMetadata) of the weights under the "model" key."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from lit_gpt.checkpoint import read_dcp_metadata

    metadata = read_dcp_metadata(path / ".metadata", trust_pickle)
    entries = {
        strip_wrapper_prefixes(k[len("model.") :]): (k, meta)
        for k, meta in metadata.state_dict_metadata.items()
        if k.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    if not entries:
        some = ", ".join(list(metadata.state_dict_metadata)[:5])
        raise ValueError(
            f"The distributed checkpoint {str(path)!r} has no weights under the 'model' key (it has {some}, ...); "
            "save it with `fabric.save(path, {'model': model, ...})`"
        )
    return entries


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
            from safetensors import safe_open

            with safe_open(str(checkpoint_dir / file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(checkpoint_dir / file, mmap=True, weights_only=True, map_location="cpu").items()


def save_hf_weights(
    items: Iterable[Tuple[str, torch.Tensor]], output_dir: Path, max_shard_bytes: int
) -> Tuple[int, int, torch.dtype]:
    """Write `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`
    once the weights exceed `max_shard_bytes`; only one shard is held in memory. Returns (shards, bytes, dtype)."""
    from safetensors.torch import save_file

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
    from lit_gpt.tokenizer import Tokenizer, sentencepiece_to_tokenizers

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
    document (`lit_gpt.separators.read_separators`): what a Hugging Face directory says of it (and what
    `scripts/convert_hf_checkpoint.py` reads back)."""
    from lit_gpt.separators import read_separators
    from lit_gpt.tokenizer import Tokenizer

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
        from importlib.metadata import version

        return version("transformers")
    except Exception:
        return "4.45.0"


def check_hf_tokenizer(checkpoint_dir: Path, output_dir: Path, text: str) -> Optional[str]:
    """None if transformers' tokenizer for `output_dir` encodes `text` like ours for `checkpoint_dir` (or if
    transformers is not installed), else a description of the difference."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    from lit_gpt.tokenizer import Tokenizer

    ours = Tokenizer(checkpoint_dir).encode_ids(text)
    theirs = AutoTokenizer.from_pretrained(str(output_dir)).encode(text, add_special_tokens=False)
    if ours == theirs:
        return None
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"token {first}: ours {ours[first : first + 5]}, transformers' {theirs[first : first + 5]}"
