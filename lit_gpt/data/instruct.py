"""Instruction data for finetuning (`finetune/lora.py`, `finetune/full.py`): records read from JSON files, prompt
templates, the token ids and loss labels of each example, the held-out split, and batches that a resumed run
continues exactly.

Data. A JSON file holding an array of objects, or a JSON-lines file (`.jsonl`, `.ndjson`, or `.json` with one object
per line), or a folder of them; `.zst`, `.gz`, `.bz2`, `.xz` compressed too. Each record is Alpaca's layout:

    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}

with the keys configurable (`a.b` for nested objects); `input` may be missing. A record that is not an object, lacks
a string instruction or output, has a non-string input, or is not valid JSON is a bad record, named by its file and
line: an error, or with `skip_bad_records` left out with a warning (as data preparation does).

Templates. `TEMPLATES["alpaca"]` is Alpaca's layout (a preamble, `### Instruction:`, `### Input:` when the record has
an input, `### Response:`); `TEMPLATES["plain"]` is the instruction, a newline and the input, and a newline.

Examples. An example is `prefix + ids(template(instruction, input)) + ids(output) + [eos]`, where the prefix is the
token that preceded every document in pretraining (`lit_gpt.data.separators.prompt_prefix`: bos, or eos for a model
trained with eos alone), the same prefix `generate/base.py --template` puts before the prompt, so that the finetuned
model sees at generation exactly the ids it was trained on. Prompt and response are tokenized separately, as a
prompt is at generation. Labels equal the ids, with -100 (the loss's ignore index) on the prompt (prefix included)
when `mask_prompt`.

`max_seq_length` is the length of the model's input rows, as `--block_size` is in pretraining: an example keeps at
most `max_seq_length + 1` tokens, the inputs are its first `max_seq_length` and the targets its last. A longer
example is cut at the end, as litgpt does: the prompt's start is kept, the response loses its end (and its eos). An
example whose prompt alone fills the window has no response token left; with `mask_prompt` it would train nothing,
and is left out (`encode_examples` counts it).

Batches (`InstructionBatches`). Rows are examples, each padded to the longest row of its micro-batch or to
`max_seq_length`, or, with `packing`, several examples laid end to end into rows of `max_seq_length` (each example
whole, the rest of a row padded). Batches are (inputs, targets) pairs of int64 (micro_batch_size, T) tensors ready
for `model(inputs, targets=targets)`: targets are the next token's label, -100 on padding, on the prompt, and where a
packed row passes from one example to the next (no loss on predicting an example's first token from the previous
one). In a packed row attention does cross from one example into the next, as between pretraining documents; for a
model pretrained with eos alone each example keeps its own prefix eos, so that two eos stand between examples.
"""

import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lit_gpt.cli import UserError
from lit_gpt.cli import rank as process_rank
from lit_gpt.data.readers import (
    COMPRESSIONS,
    BadRecord,
    Stats,
    file_format,
    nested_value,
    read_lines,
    short_reason,
    walk_files,
)
from lit_gpt.data.separators import DEFAULT_SEPARATORS, Separators, prompt_prefix
from lit_gpt.data.separators import encode_prompt as separators_encode_prompt
from lit_gpt.tokenizer import Tokenizer

IGNORE_INDEX = -100  # targets the loss skips (lit_gpt/loss.py)
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what `surrogateescape` decodes a byte that is not UTF-8 to
MAX_LISTED = 3  # bad records named in the error line

# ---------------------------------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------------------------------


def find_instruction_files(
    paths: Union[str, Path, Sequence[Union[str, Path]]],
    flag: str = "--data",
    problems: Optional[List[BadRecord]] = None,
) -> List[Path]:
    """The JSON and JSON-lines files of `paths` (files, or folders searched through), each once, sorted. A file or
    folder under a folder that cannot be read is an error, or, with a `problems` list, appended to it."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise UserError(f"{flag} names no file; pass a JSON or JSON-lines file of instruction records, or a folder")
    found: Dict[str, Path] = {}
    kinds = ".json, .jsonl, .ndjson, each also with " + ", ".join(COMPRESSIONS)
    for item in items:
        path = Path(item)
        if path.is_dir():
            for p, problem in walk_files(path, "*"):
                if problem is not None and (_is_json(p) or problem.startswith("unreadable directory")):
                    if problems is None:
                        raise UserError(
                            f"{flag} {item}: {p} cannot be read ({problem}); fix it or move it away, or leave it out "
                            "with --skip_bad_records true"
                        )
                    problems.append(BadRecord(str(p), None, problem))
                elif _is_json(p):
                    found.setdefault(os.path.realpath(p), p)
        elif path.is_file():
            if not _is_json(path):
                raise UserError(f"{flag} {item} is not a JSON or JSON-lines file ({kinds})")
            found.setdefault(os.path.realpath(path), path)
        else:
            raise UserError(f"{flag} {item}: no such file or folder")
    if not found:
        raise UserError(f"{flag} {' '.join(map(str, items))} holds no JSON or JSON-lines file ({kinds})")
    return sorted(found.values())


def _is_json(path: Path) -> bool:
    return (file_format(path) or ("",))[0] == "json"


def load_instructions(
    path: Union[str, Path, Sequence[Union[str, Path]]],
    instruction_key: str = "instruction",
    input_key: str = "input",
    output_key: str = "output",
    skip_bad_records: bool = False,
    problems: Optional[List[BadRecord]] = None,
) -> List[Dict[str, str]]:
    """The records of the JSON / JSON-lines file(s) or folder(s) `path`, in file order, each as
    `{"instruction": ..., "input": ..., "output": ...}` (input "" when the record has none).

    Bad records (see the module docstring) raise a one-line `UserError` naming the first few by file and line; with
    `skip_bad_records` they are left out with a warning on stderr, and appended to `problems` when given."""
    keys = (instruction_key, input_key, output_key)
    items = [path] if isinstance(path, (str, Path)) else list(path)
    records: List[Dict[str, str]] = []
    stats, seen = Stats(), 0
    for file in find_instruction_files(path, problems=stats.bad if skip_bad_records else None):
        for line, row in _json_rows(file, stats):
            seen += 1
            record = _record(row, keys)
            if isinstance(record, str):
                stats.skip(BadRecord(str(file), line, record))
            else:
                records.append(record)
    if stats.bad:
        listed = "; ".join(map(str, stats.bad[:MAX_LISTED]))
        more = f" and {len(stats.bad) - MAX_LISTED} more" if len(stats.bad) > MAX_LISTED else ""
        if not skip_bad_records:
            raise UserError(
                f"{len(stats.bad)} bad instruction records: {listed}{more}. Fix them, or leave them out with "
                "--skip_bad_records true"
            )
        if process_rank() == 0:
            print(f"warning: left out {len(stats.bad)} bad instruction records: {listed}{more}", file=sys.stderr)
        if problems is not None:
            problems.extend(stats.bad)
    if not records and not seen and not stats.bad:
        raise UserError(
            f"--data {' '.join(map(str, items))} holds no record: its JSON files are empty (or hold an empty array); "
            "pass the files of your instruction records"
        )
    if not records:
        raise UserError(
            f"--data {' '.join(map(str, items))} holds no record with strings under {instruction_key!r} and "
            f"{output_key!r}; name the keys your records use with --instruction_key and --output_key"
        )
    return records


def _record(row: object, keys: Tuple[str, str, str]) -> Union[Dict[str, str], str]:
    """The record, or why it is bad."""
    if not isinstance(row, dict):
        return f"not a JSON object but {_json_type(row)}"
    record = {}
    for name, key in zip(("instruction", "input", "output"), keys):
        value = nested_value(row, key)
        if name == "input" and value is None:
            value = ""
        if value is None:
            return f"no {key!r} string"
        if not isinstance(value, str):
            return f"{key!r} is {_json_type(value)}, not a string"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape of half a surrogate pair ("\ud800"): not a character
            return f"{key!r} holds an unpaired surrogate escape \\u{ord(value[e.start]):04x}, which is not text"
        record[name] = value
    return record


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), "null")


def _json_rows(path: Path, stats: Stats) -> Iterator[Tuple[int, object]]:
    """(1-based line, value) of each JSON-lines row, or of each element of a JSON array (the line it starts on)."""
    lines = read_lines(path, (file_format(path) or ("", None))[1], stats)  # compressed files, BOM, truncation
    first = next(lines, None)
    while first is not None and not first[1].strip():
        first = next(lines, None)
    if first is None:
        return
    if first[1].startswith((b"\xff\xfe", b"\xfe\xff")):  # what Windows PowerShell's `>` writes
        stats.skip(BadRecord(str(path), first[0], "UTF-16 text, not UTF-8 (it begins with a UTF-16 byte order mark): "
                             "save it as UTF-8 (the file is unread)"))  # fmt: skip
        return
    if first[1].lstrip().startswith(b"["):
        data = b"".join([first[1]] + [line for _, line in lines])
        yield from _array_elements(path, data, first[0], stats)
        return
    for line_no, raw in itertools.chain([first], lines):
        if not raw.strip():
            continue
        try:
            yield line_no, json.loads(raw)
        except ValueError as e:  # malformed JSON or invalid UTF-8
            hint = " (a JSON file holds one array of records, or one record per line)" if line_no == first[0] else ""
            stats.skip(BadRecord(str(path), line_no, f"invalid JSON: {short_reason(e)}{hint}"))


def _array_elements(path: Path, data: bytes, first_line: int, stats: Stats) -> Iterator[Tuple[int, object]]:
    """The elements of the JSON array `data` (which starts on line `first_line`), each with the line it starts on; an
    error in the array ends it (the elements before it are kept)."""
    # bytes that are not UTF-8 become lone surrogates U+DC80..U+DCFF: the element that holds one is a bad record, the
    # others are kept (decoding the whole file strictly lost every element of it to one stray byte)
    text = data.decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    at, line, counted = text.index("[") + 1, first_line, 0

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    at = skip_space(at)
    if text[at : at + 1] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError as e:
            stats.skip(BadRecord(str(path), line_of(min(at, len(text))), f"invalid JSON array: {short_reason(e)} (rest "
                                 "of file unread)"))  # fmt: skip
            return
        stray = _NOT_UTF8.search(text, at, end)
        if stray:
            start, line = line_of(at), line_of(at) + text.count("\n", at, stray.start())
            where = f" on line {line}" if line != start else ""
            stats.skip(BadRecord(str(path), start, f"not UTF-8 text: byte 0x{ord(stray[0]) - 0xDC00:02x}{where}"))
        else:
            yield line_of(at), value
        at = skip_space(end)
        if text[at : at + 1] == ",":
            at = skip_space(at + 1)
            continue
        if text[at : at + 1] != "]":
            stats.skip(BadRecord(str(path), line_of(at), "invalid JSON array: expected ',' or ']' (rest of file "
                                 "unread)"))  # fmt: skip
        elif text[skip_space(at + 1) :]:
            stats.skip(BadRecord(str(path), line_of(skip_space(at + 1)), "invalid JSON: text after the array"))
        return


# ---------------------------------------------------------------------------------------------------------------------
# Prompt templates
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A prompt with `{instruction}` (and `{input}`), for records with an input and for those without."""

    with_input: str
    without_input: str

    def apply(self, instruction: str, input: str = "") -> str:
        if input.strip():
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)


TEMPLATES: Dict[str, Template] = {
    # Alpaca's layout (github.com/tatsu-lab/stanford_alpaca): a preamble, then headed sections
    "alpaca": Template(
        with_input=(
            "Below is an instruction that describes a task, together with an input that gives it context. Write a "
            "response that carries out the instruction.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        without_input=(
            "Below is an instruction that describes a task. Write a response that carries out the instruction.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    ),
    "plain": Template(with_input="{instruction}\n{input}\n", without_input="{instruction}\n"),
}
TemplateName = Literal["alpaca", "plain"]


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UserError(f"--template {name!r} is not a template; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def apply_template(name: str, instruction: str, input: str = "") -> str:
    """The prompt text of an instruction (and input) in the template `name`."""
    return get_template(name).apply(instruction, input)


# ---------------------------------------------------------------------------------------------------------------------
# Token ids and labels
# ---------------------------------------------------------------------------------------------------------------------


def encode_prompt(
    tokenizer: Tokenizer, instruction: str, template: str, input: str = "", separators: Optional[Separators] = None
) -> List[int]:
    """The ids of a templated prompt as finetuning puts it before each response and `generate/base.py --template`
    generates from: `lit_gpt.data.separators.encode_prompt` of the template's text, a special token's spelling in
    the instruction being text, as in the examples finetuning encoded."""
    return separators_encode_prompt(
        tokenizer, apply_template(template, instruction, input), separators or DEFAULT_SEPARATORS, parse_special=False
    )


def encode_example(
    tokenizer: Tokenizer,
    example: Dict[str, str],
    template: str,
    max_seq_length: int,
    mask_prompt: bool = True,
    separators: Optional[Separators] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of one record, int64 tensors of at most `max_seq_length + 1` tokens: prompt prefix, prompt,
    response and eos, cut at the end if longer; labels are the ids with -100 on the prompt when `mask_prompt` (see the
    module docstring)."""
    return encode_examples(tokenizer, [example], template, max_seq_length, mask_prompt, separators, keep_empty=True)[0]


def encode_examples(
    tokenizer: Tokenizer,
    examples: Sequence[Dict[str, str]],
    template: str,
    max_seq_length: int,
    mask_prompt: bool = True,
    separators: Optional[Separators] = None,
    keep_empty: bool = False,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """`encode_example` of every record, tokenized in batches. Examples left with no label to train on (a prompt that
    fills the window under `mask_prompt`) are left out with a note on stderr, unless `keep_empty`."""
    if max_seq_length < 1:
        raise UserError(f"--max_seq_length {max_seq_length} must be at least 1")
    if tokenizer.eos_id is None:
        raise UserError(f"the tokenizer in {tokenizer.checkpoint_dir} has no eos token, which ends every response")
    separators = separators or DEFAULT_SEPARATORS
    prefix = prompt_prefix(tokenizer, separators)
    chosen = get_template(template)
    prompts = tokenizer.encode_batch([chosen.apply(e["instruction"], e["input"]) for e in examples])
    responses = tokenizer.encode_batch([e["output"] for e in examples], eos=True)
    encoded, empty = [], 0
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor(prefix + prompt + response, dtype=torch.int64)[: max_seq_length + 1]
        labels = ids.clone()
        if mask_prompt:
            labels[: len(prefix) + len(prompt)] = IGNORE_INDEX
        if not keep_empty and (labels[1:] == IGNORE_INDEX).all():
            empty += 1
            continue
        encoded.append((ids, labels))
    if empty and process_rank() == 0:
        print(
            f"note: left out {empty} of {len(examples)} examples whose prompt fills --max_seq_length {max_seq_length} "
            "(no response token to train on); raise --max_seq_length to keep them",
            file=sys.stderr,
        )
    return encoded


# ---------------------------------------------------------------------------------------------------------------------
# The held-out split
# ---------------------------------------------------------------------------------------------------------------------


def split_instructions(
    examples: Sequence[Dict[str, str]],
    val_fraction: Optional[float] = None,
    val_size: Optional[int] = None,
    seed: int = 42,
) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    """(train, val): `val_size` records, or `round(val_fraction * len(examples))`, held out for validation, each side
    in the records' order. The records held out are those with the lowest hash of (seed, record): the same on every
    run and machine whatever the order of the files, and identical records fall on one side."""
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give one of val_fraction and val_size")
    n = len(examples)
    if val_size is None:
        if not 0 <= val_fraction < 1:
            raise UserError(f"--val_fraction {val_fraction} must be at least 0 and below 1")
        val_size = round(val_fraction * n)
        if val_fraction > 0 and val_size == 0:
            raise UserError(
                f"--val_fraction {val_fraction} of {n} examples holds out none; raise it to at least {1 / n:.2g}"
            )
        if val_size >= n:
            raise UserError(
                f"--val_fraction {val_fraction} of {n} examples holds out all {n}, leaving none to train on; lower it"
            )
    if not 0 <= val_size < n:
        raise UserError(f"--val_size {val_size} must be at least 0 and below the number of examples ({n})")

    def key(i: int) -> Tuple[bytes, int]:
        text = json.dumps(examples[i], sort_keys=True, ensure_ascii=False)
        return hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest(), i

    held_out = set(sorted(range(n), key=key)[:val_size])
    train = [e for i, e in enumerate(examples) if i not in held_out]
    val = [e for i, e in enumerate(examples) if i in held_out]
    return train, val


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


def pack_examples(
    encoded: Sequence[Tuple[torch.Tensor, torch.Tensor]], max_seq_length: int, seed: int
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Examples laid end to end into rows of at most `max_seq_length + 1` tokens, in an order drawn from `seed`, each
    example whole (the next one that does not fit starts a new row). The label of each example's first token is -100:
    no loss on predicting it from the previous example."""
    order = np.random.default_rng([seed, 1]).permutation(len(encoded))
    rows, ids, labels, length = [], [], [], 0
    for i in order:
        x, y = encoded[i]
        if ids and length + len(x) > max_seq_length + 1:
            rows.append((torch.cat(ids), torch.cat(labels)))
            ids, labels, length = [], [], 0
        y = y.clone()
        y[0] = IGNORE_INDEX
        ids.append(x)
        labels.append(y)
        length += len(x)
    if ids:
        rows.append((torch.cat(ids), torch.cat(labels)))
    return rows


class InstructionBatches:
    """Endless (inputs, targets) micro-batches of this process over the encoded examples, epoch after epoch, in an
    order drawn from the seed and the epoch.

    Each global micro-batch is `world_size * micro_batch_size` rows of the epoch's order; this process (`rank`) takes
    its `micro_batch_size` consecutive ones; an epoch ends at the last whole global micro-batch (the few rows past it
    come first in no later epoch: each epoch draws its own order). `state_dict()` records the epoch and the rows used
    of it, so that a resumed run (`load_state_dict`) gets exactly the batches that followed, also on another number of
    processes or micro-batch size whose global micro-batch divides the rows used.

    `padding`: "longest" pads each micro-batch to its longest row, "max_seq_length" every row to `max_seq_length`;
    with `packing`, rows are packed examples (`pack_examples`), always `max_seq_length` long. `shuffle=False` keeps
    the examples' order (validation).
    """

    def __init__(
        self,
        encoded: Sequence[Tuple[torch.Tensor, torch.Tensor]],
        micro_batch_size: int,
        max_seq_length: int,
        padding: Literal["longest", "max_seq_length"] = "longest",
        packing: bool = False,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        pad_id: int = 0,
    ) -> None:
        if padding not in ("longest", "max_seq_length"):
            raise UserError(f"--padding {padding!r} is not one of longest, max_seq_length")
        if micro_batch_size < 1:
            raise UserError(f"--micro_batch_size {micro_batch_size} must be at least 1")
        too_long = [len(x) for x, _ in encoded if len(x) > max_seq_length + 1]
        if too_long:
            raise ValueError(f"an example of {too_long[0]} tokens exceeds max_seq_length + 1 = {max_seq_length + 1}")
        self.rows = pack_examples(encoded, max_seq_length, seed) if packing else list(encoded)
        self.micro_batch_size, self.max_seq_length = micro_batch_size, max_seq_length
        self.pad_to = max_seq_length if packing or padding == "max_seq_length" else None
        self.seed, self.rank, self.world_size, self.shuffle, self.pad_id = seed, rank, world_size, shuffle, pad_id
        self.global_rows = world_size * micro_batch_size
        if len(self.rows) < self.global_rows:
            what = "packed rows" if packing else "examples"
            raise UserError(
                f"{len(self.rows)} {what} make no whole micro-batch of {micro_batch_size} rows on each of "
                f"{world_size} processes; lower --micro_batch_size or use more data"
            )
        self.epoch, self.position = 0, 0  # position: rows of the epoch's order that all processes used so far
        self.fingerprint = _fingerprint(self.rows, packing, pad_to=self.pad_to)

    def __len__(self) -> int:
        """Micro-batches per epoch (the same on every process)."""
        return len(self.rows) // self.global_rows

    @property
    def rows_per_epoch(self) -> int:
        return len(self) * self.global_rows

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.rows))

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = self.order(self.epoch)
            while self.position + self.global_rows <= self.rows_per_epoch:
                start = self.position + self.rank * self.micro_batch_size
                batch = self.collate([self.rows[i] for i in order[start : start + self.micro_batch_size]])
                self.position += self.global_rows
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def epoch_batches(self, epoch: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """This process's micro-batches of one whole epoch (validation), without touching the position."""
        order, size = self.order(epoch), self.micro_batch_size
        starts = range(self.rank * size, self.rows_per_epoch, self.global_rows)
        return [self.collate([self.rows[i] for i in order[s : s + size]]) for s in starts]

    def collate(self, rows: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        return collate(rows, self.pad_to, self.pad_id)

    def state_dict(self) -> Dict[str, object]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue after the batches that `state` (this class's `state_dict()`) had given; refuse a state of other
        data, another seed, or a position that this run's global micro-batch does not divide."""
        if state.get("seed") != self.seed:
            raise UserError(
                f"the checkpoint's data order is of another seed ({state.get('seed')}, this run's {self.seed}); "
                "resume with the interrupted run's --seed"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                "the checkpoint's data order is of other examples or encoding (the data files, keys, --template, "
                "--max_seq_length, --mask_prompt, --packing, --padding or the tokenizer differ); resume with the "
                "interrupted run's"
            )
        position = int(state["position"])
        if position % self.global_rows:
            raise UserError(
                f"the checkpoint stopped after {position} rows of epoch {state['epoch']}, which this run's "
                f"{self.world_size} processes x --micro_batch_size {self.micro_batch_size} do not divide; resume "
                "with the processes and micro-batch size of the interrupted run"
            )
        self.epoch, self.position = int(state["epoch"]), position


def collate(
    rows: Sequence[Tuple[torch.Tensor, torch.Tensor]], pad_to: Optional[int] = None, pad_id: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids and labels -> (inputs, targets) (B, T): inputs a row's ids but the last, targets its labels but the
    first; padded with `pad_id` / -100 to T (`pad_to`, or the longest row's length)."""
    length = pad_to or max(len(x) - 1 for x, _ in rows)
    inputs = torch.full((len(rows), length), pad_id, dtype=torch.int64)
    targets = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.int64)
    for row, (x, y) in enumerate(rows):
        inputs[row, : len(x) - 1] = x[:-1]
        targets[row, : len(y) - 1] = y[1:]
    return inputs, targets


def validation_batches(
    encoded: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    micro_batch_size: int,
    max_seq_length: int,
    padding: Literal["longest", "max_seq_length"] = "longest",
    packing: bool = False,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
    pad_id: int = 0,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """This process's micro-batches of the held-out examples, in order, as `InstructionBatches` lays out rows: every
    process gets `len(rows) // world_size` rows (the same number of forward passes on each, as FSDP needs) in
    micro-batches of `micro_batch_size`, the last one smaller if need be; the `len(rows) % world_size` last rows are
    left out."""
    rows = pack_examples(encoded, max_seq_length, seed) if packing else list(encoded)
    per_rank = len(rows) // world_size
    if per_rank == 0:
        what = "packed rows" if packing else "examples"
        raise UserError(
            f"{len(rows)} held-out {what} are fewer than the {world_size} processes that validate; hold out more "
            "(--val_fraction)"
        )
    mine = rows[rank * per_rank : (rank + 1) * per_rank]
    pad_to = max_seq_length if packing or padding == "max_seq_length" else None
    return [collate(mine[i : i + micro_batch_size], pad_to, pad_id) for i in range(0, per_rank, micro_batch_size)]


def _fingerprint(rows: Sequence[Tuple[torch.Tensor, torch.Tensor]], packing: bool, pad_to: Optional[int]) -> str:
    digest = hashlib.blake2b(f"{packing} {pad_to} {len(rows)}".encode(), digest_size=16)
    for x, y in rows:
        digest.update(np.int64(len(x)).tobytes())
        digest.update(x.numpy().tobytes())
        digest.update(y.numpy().tobytes())
    return digest.hexdigest()
