"""The document-separator convention: which special tokens stand between the documents of the training stream.

Pretraining lays documents end to end; what separates them is a choice made once, at data preparation, that every
later step has to repeat. Three conventions are in use:

- `eos` after each document (`Separators(bos=False, eos=True)`): lit-gpt's, and this toolkit's default
  (`--eos true` of the prepare scripts): `A</s>B</s>C</s>`;
- `bos` before each document (`Separators(bos=True, eos=False)`): TinyLlama's released weights and Llama-2's, whose
  Hugging Face tokenizers say `add_bos_token: true`: `<s>A<s>B<s>C`;
- both (`Separators(bos=True, eos=True)`): `<s>A</s><s>B</s><s>C</s>`.

Where it is recorded:

- preparation (`lit_gpt/data/prepare.py`, the `--bos`/`--eos` flags of every prepare script) writes it into the output
  folder's `prepare.json` as `"separators": {"bos": ..., "eos": ...}`, with the ids written (`"bos_id"`, `"eos_id"`;
  `pretrain/tinyllama.py --document_mask` splits documents at that eos, so it needs `--eos true` data); a folder
  without that field was prepared before it existed, with the default;
- `pretrain/tinyllama.py` reads it from its data folders (`lit_gpt.data.loaders.data_separators`: a mix of
  conventions is refused, and so is a resume on data prepared with another) and saves it in the checkpoint's
  `hparams["separators"]` (a checkpoint without it was trained on the default);
- a lit checkpoint directory holds it in `separators.json`, next to `lit_config.json` (`write_separators`), written
  by `scripts/convert_pretrained_checkpoint.py` (from the training checkpoint; the copied `tokenizer_config.json`'s
  `add_bos_token` is made to agree) and `scripts/convert_hf_checkpoint.py` (from the tokenizer's `add_bos_token`);
- a Hugging Face export (`scripts/convert_lit_checkpoint.py`) says it as `add_bos_token` alone, which is all
  transformers and lm-evaluation-harness read: "both" comes back from it as `bos` before each document (the same
  prompt prefix).

Who follows it: preparation and finetuning encode documents with `encode_document(s)`, and generation puts
`prompt_prefix` in front of a prompt: the token that stood right before the first token of every document in
training, so that a prompt starts as a document started. That is `bos` when the model was trained with `bos`, and
`eos` when it was trained with `eos` alone: there a document's first token always followed the previous document's
`eos` (a prompt without any prefix starts in a context the model never saw at a document start).
Generation also stops where training documents ended (`stop_ids`): at `eos`, and for a model trained with `bos`
alone at `bos` too, the start of a next document.

A checkpoint directory without `separators.json` (converted before it existed, or by another tool) is read as its
tokenizer says (`read_separators`): `add_bos_token: true` in `tokenizer_config.json` (Llama-2's and TinyLlama's
tokenizers, and `scripts/train_tokenizer.py`'s) gives `bos` before each document, which is also the prompt that
generation gave such checkpoints before; otherwise this toolkit's default, `eos` after each document. A note on
stderr says so. A lit checkpoint converted from this toolkit's training checkpoint before `separators.json` existed,
with Llama-2's tokenizer, was in fact trained with `eos` after each document: convert it again to record that.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Tuple

from lit_gpt.cli import UserError
from lit_gpt.files import atomic_file

if TYPE_CHECKING:
    from lit_gpt.tokenizer import Tokenizer

SEPARATORS_FILE = "separators.json"  # in a lit checkpoint directory, next to lit_config.json
MAX_SEPARATORS_BYTES = 65536  # what read_separators reads of it at most


@dataclass(frozen=True)
class Separators:
    """Whether each training document is preceded by the tokenizer's `bos` token and followed by its `eos` token."""

    bos: bool = False
    eos: bool = True

    def __post_init__(self) -> None:
        if not self.bos and not self.eos:
            raise ValueError("documents need a separator: bos, eos or both (with neither they run together)")

    def to_dict(self) -> dict:
        return {"bos": self.bos, "eos": self.eos}

    @classmethod
    def from_dict(cls, d: object, source: str) -> "Separators":
        """The convention recorded as `{"bos": bool, "eos": bool}` in `source` (named in the error)."""
        if not isinstance(d, dict) or not all(isinstance(d.get(k), bool) for k in ("bos", "eos")):
            raise UserError(
                f'{source} records the separators as {d!r}; expected {{"bos": true|false, "eos": true|false}}'
            )
        try:
            return cls(bos=d["bos"], eos=d["eos"])
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None

    def __str__(self) -> str:
        return {(True, False): "bos before each document", (False, True): "eos after each document"}.get(
            (self.bos, self.eos), "bos before and eos after each document"
        )


DEFAULT_SEPARATORS = Separators()  # eos after each document: what preparation writes unless told otherwise


def read_separators(checkpoint_dir: Path) -> Separators:
    """The convention the model in the lit checkpoint directory `checkpoint_dir` was trained with: its
    `separators.json`, or without one what its `tokenizer_config.json` implies (see the module docstring), with a
    note on stderr."""
    path = Path(checkpoint_dir) / SEPARATORS_FILE
    if path.is_file():
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_SEPARATORS_BYTES + 1)
            if len(text) > MAX_SEPARATORS_BYTES:
                raise ValueError(f"over {MAX_SEPARATORS_BYTES} bytes, where it holds two booleans")
            recorded = json.loads(text.decode("utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(
                f"{path} cannot be read ({e}); write it again, or delete it to go by the tokenizer"
            ) from None
        return Separators.from_dict(recorded, str(path))
    if path.exists() or path.is_symlink():  # a folder, a link to nothing, a device: not a record to go around
        raise UserError(f"{path} is not a file; delete it to go by the tokenizer, or write it again")
    separators = separators_of_tokenizer(checkpoint_dir)
    print(
        f"note: {checkpoint_dir} has no {SEPARATORS_FILE}; assuming the model was trained with {separators} "
        f"(its tokenizer_config.json's add_bos_token is {separators.bos})",
        file=sys.stderr,
    )
    return separators


def separators_of_tokenizer(tokenizer_dir: Path) -> Separators:
    """What a tokenizer directory's `tokenizer_config.json` says of the training documents: `add_bos_token: true`
    (Llama-2's, TinyLlama's) is `bos` before each document, anything else this toolkit's default."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        config = {}
    add_bos = isinstance(config, dict) and config.get("add_bos_token") is True
    return Separators(bos=True, eos=False) if add_bos else DEFAULT_SEPARATORS


def write_separators(checkpoint_dir: Path, separators: Separators) -> Path:
    """Write `separators.json` into `checkpoint_dir` (whole or not at all); returns its path."""
    path = Path(checkpoint_dir) / SEPARATORS_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(separators.to_dict()) + "\n", encoding="utf-8")
    return path


def check_tokenizer(tokenizer: "Tokenizer", separators: Separators, source: str = "the model's convention") -> None:
    """Refuse a tokenizer that lacks a token the convention needs; `source` names what asked for it (`{name}` in it
    becomes `bos` or `eos`: `"--{name} true"`)."""
    for name, what, action, example in [
        ("bos", "beginning-of-document", "puts before", "<s>"),
        ("eos", "end-of-document", "appends to", "</s>"),
    ]:
        if getattr(separators, name) and getattr(tokenizer, f"{name}_id") is None:
            raise UserError(
                f"the tokenizer in {tokenizer.checkpoint_dir} has no {what} ({name}) token, which "
                f"{source.format(name=name)} {action} every document. Name it in tokenizer_config.json "
                f'(`"{name}_token": "{example}"`) or generation_config.json (`"{name}_token_id": N`) next to the '
                "tokenizer, or use a tokenizer that has one."
            )


def encode_documents(
    tokenizer: "Tokenizer", texts: Sequence[str], separators: Separators, num_threads: int = 1
) -> List[List[int]]:
    """The token ids of each text as a training document: `bos` in front and/or `eos` behind, as `separators` says."""
    check_tokenizer(tokenizer, separators)
    return tokenizer.encode_batch(list(texts), bos=separators.bos, eos=separators.eos, num_threads=num_threads)


def encode_document(tokenizer: "Tokenizer", text: str, separators: Separators) -> List[int]:
    """The token ids of one text as a training document (`encode_documents`)."""
    return encode_documents(tokenizer, [text], separators)[0]


def document_ends(tokenizer: "Tokenizer", separators: Separators) -> Tuple[List[int], List[int]]:
    """(ids before, ids after) a document's own tokens: for a document encoded in pieces (`encode_long`)."""
    return ([tokenizer.bos_id] if separators.bos else []), ([tokenizer.eos_id] if separators.eos else [])


def prompt_prefix(tokenizer: "Tokenizer", separators: Separators) -> List[int]:
    """The ids to put before a prompt: the token that preceded every document's first token in training (`bos`, or
    the previous document's `eos` when there was no `bos`)."""
    prefix = [tokenizer.bos_id] if separators.bos else [tokenizer.eos_id]
    if prefix[0] is None:
        which = "bos" if separators.bos else "eos"
        raise UserError(
            f"the tokenizer in {tokenizer.checkpoint_dir} has no {which} token, which every training document began "
            f"after ({separators}); name it in its tokenizer_config.json"
        )
    return prefix


def stop_ids(tokenizer: "Tokenizer", separators: Separators) -> List[int]:
    """The ids that end a generated sample: `eos`, and for a model trained with `bos` alone also `bos`: there a
    document ended only where the next one's `bos` began, and an `eos` never came in pretraining (finetuned responses
    end with `eos` under every convention, `lit_gpt/data/instruct.py`)."""
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    if separators.bos and not separators.eos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
    return ids


def encode_prompt(tokenizer: "Tokenizer", prompt: str, separators: Separators, parse_special: bool = True) -> List[int]:
    """The ids of a prompt to generate from: `prompt_prefix`, then the prompt's tokens (a special token's spelling in
    it is that token, as transformers reads a prompt, unless `parse_special` is False)."""
    return prompt_prefix(tokenizer, separators) + tokenizer.encode_ids(prompt, parse_special=parse_special)
