"""The pretraining data: litdata chunks of SlimPajama and Starcoder tokens (or any prepared sources), mixed by weight,
streamed with state.

By default the sources are `--data_dir`'s `slimpajama/train` and `starcoder` with `--data_weights`, validation its
`slimpajama/val`. `--train_data` names any number of prepared folders (local paths or object-store URLs) with their
weights, as a mapping or a YAML file of one, and `--val_data` the validation folder (`data_sources`).

Each source folder holds chunks written with `TokensLoader()` (`scripts/prepare_slimpajama.py`,
`scripts/prepare_starcoder.py`); reading them with `TokensLoader(block_size + 1)` yields (block_size + 1)-token
items: inputs are the first `block_size`, targets the last `block_size`. Pretraining reads them in one global order,
the same for every number of processes (`lit_gpt/data/order.py`); `mixture_dataloader`, litdata's own mix, is what
checkpoints written before that order resume with (its `state_dict()` is tied to the number of processes, the
micro-batch size and the loader workers, and is exact with one worker per process).
`data_fingerprints` and `data_contents` are what a run records of its sources, so that a resume on a folder prepared
again is refused; `DataWatch` stops a run whose folder is replaced while it reads it.
"""

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml

from lit_gpt.cli import check_not_empty_path
from lit_gpt.data.prepare import MANIFEST, prepared_separators, recorded_chunks, recorded_max_token_id
from lit_gpt.data.separators import DEFAULT_SEPARATORS, Separators, read_separators
from lit_gpt.files import file_sha256
from lit_gpt.signals import end_children_at_exit, ignore_stop_signals

TRAIN_DIRS = ("slimpajama/train", "starcoder")
VAL_DIR = "slimpajama/val"


def check_data_dir(data_dir: str) -> None:
    """Fail early, with the command to run, if a local `data_dir` lacks a prepared source folder."""
    if "://" in data_dir:  # object store: litdata reports missing folders itself
        return
    missing = [d for d in (*TRAIN_DIRS, VAL_DIR) if not (Path(data_dir) / d / "index.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data_dir {data_dir} lacks prepared litdata chunks in: {', '.join(missing)} (no index.json). "
            "Prepare them with scripts/prepare_slimpajama.py and scripts/prepare_starcoder.py (see "
            "tutorials/pretrain_tinyllama.md), or pass --data_dir pointing to the folder that holds them."
        )


def data_sources(
    data_dir: str,
    data_weights: Sequence[float],
    train_data: Optional[Union[Dict[str, float], str, Path]] = None,
    val_data: Optional[str] = None,
) -> Tuple[List[Tuple[str, float]], str]:
    """The training sources as (folder, weight) pairs and the validation folder.

    `train_data` is a mapping of prepared folders to sampling weights, or the path of a YAML file that holds one
    (folders relative to the working directory); without it, `data_dir`'s slimpajama/train and starcoder with
    `data_weights`. `val_data` defaults to `data_dir`'s slimpajama/val. Local folders are normalized (`data/x/` and
    `./data/x` are one folder), so that a resumed run can be compared with the checkpoint's."""
    example = '--train_data "{data/slimpajama/train: 0.7, data/starcoder: 0.3}"'
    if train_data is None:
        if len(data_weights) != len(TRAIN_DIRS) or min(data_weights) < 0 or sum(data_weights) <= 0:
            raise ValueError(
                f"--data_weights {list(data_weights)} must be two non-negative weights for {', '.join(TRAIN_DIRS)}"
            )
        mapping = {join(data_dir, d): w for d, w in zip(TRAIN_DIRS, data_weights)}
    elif isinstance(train_data, dict):
        mapping = train_data
    elif not Path(train_data).is_file() and not isinstance(value := _yaml_value(str(train_data)), (str, type(None))):
        if not isinstance(value, dict):  # a list, a number, ...: meant as data, not as a file name
            what = f"a list ({', '.join(map(str, value))})" if isinstance(value, list) else "a number"
            what = "a truth value" if isinstance(value, bool) else what
            raise ValueError(
                f"--train_data {train_data!r} is not a path: it reads as {what}. It takes a mapping of prepared "
                f"folders to weights in braces, e.g. {example}, or a YAML file that holds one"
            )
        mapping = value  # a mapping that the command line did not read as one (a weight that is no number)
    else:
        path = Path(train_data)
        if not path.is_file() and ("," in str(train_data) or path.is_dir()):  # not a file name, but meant as data
            what = "a prepared folder" if path.is_dir() else "several folders, not a file"
            raise FileNotFoundError(
                f"--train_data {train_data!r} reads as {what}; it takes a mapping of prepared folders to weights in "
                f"braces, e.g. {example} (one folder: '{{{str(train_data).split(',')[0].strip()}: 1.0}}'), or a YAML "
                "file that holds one"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"--train_data {train_data}: no such file. Pass a mapping of prepared folders to weights, e.g. "
                f"{example}, or a YAML file that holds one"
            )
        mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(mapping, dict):
            raise ValueError(
                f"--train_data {train_data} must hold a mapping of prepared folders to weights, e.g. {example}"
            )
    sources: Dict[str, float] = {}
    seen: Dict[str, str] = {}  # the folder itself (through `..` and symbolic links) -> how --train_data names it
    for folder, weight in mapping.items():
        check_not_empty_path("--train_data: a folder", folder)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight < math.inf:
            raise ValueError(f"--train_data: the weight of {folder} is {weight!r}; weights are non-negative numbers")
        key = normalize(str(folder))
        real = key if "://" in key else os.path.realpath(key)
        if real in seen:
            again = "" if seen[real] == str(folder) else f" (as {seen[real]})"
            raise ValueError(f"--train_data names {folder} twice{again}; give each prepared folder once")
        seen[real] = str(folder)
        sources[key] = float(weight)
    if not sources or sum(sources.values()) <= 0:
        raise ValueError(f"--train_data needs at least one prepared folder with a positive weight, e.g. {example}")
    return list(sources.items()), normalize(val_data) if val_data else join(data_dir, VAL_DIR)


def _yaml_value(text: str) -> object:
    """`text` read as YAML (the command line's reading of a value), or `text` itself where it is no YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def recorded_sources(hparams: Dict[str, object]) -> Optional[List[Tuple[str, float]]]:
    """The training sources that a run's hparams record: its `train_sources`, or for a run from before --train_data
    existed, its --data_dir's two sources with its --data_weights (None when neither is recorded)."""
    then = hparams.get("train_sources")
    if then is None and "data_dir" in hparams:  # written before --train_data existed: --data_dir's two sources
        then = data_sources(hparams["data_dir"], hparams.get("data_weights") or (0.693584, 0.306416))[0]
    return then


def data_fingerprints(folders: Sequence[str]) -> Dict[str, str]:
    """folder -> the SHA-256 of its `index.json`, which lists every chunk with its size and item count: what a run
    records of the data it trains on, so that a resume on a folder prepared again since is refused (the data loader's
    saved position would point into other data). An object-store folder is not read here and not recorded.
    `data_contents` adds the chunks' tokens, which a preparation from other text of the same token counts changes
    alone."""
    return {folder: file_sha256(Path(folder) / "index.json") for folder in folders if "://" not in folder}


# bytes of each chunk's tokens that `data_contents` reads: at its start and at its end
SAMPLE_BYTES = 2**16


def data_contents(folders: Sequence[str], threads: int = 16) -> Dict[str, str]:
    """folder -> a SHA-256 of the tokens its chunks hold, checked against what its preparation recorded.

    A folder whose `prepare.json` records every chunk's size and SHA-256 (`lit_gpt.data.prepare.chunk_digests`): the
    digest of its `index.json` and of those records, after a check of the chunks that costs one `stat` each: a chunk
    of another size is refused, and one modified after the `prepare.json` was written (an edit anywhere in it) is read
    whole, in `threads` threads, and refused unless it still has its recorded digest. A folder copied without its
    modification times (`cp -r`; `cp -p` and `rsync -a` keep them) is read whole at every start, said in a note.

    A folder prepared before the digests were recorded: of each chunk that its `index.json` lists, in order, the
    chunk's name, its size on disk and the first and last `SAMPLE_BYTES` of its tokens (after litdata's header of item
    offsets), read in `threads` threads; an edit elsewhere in a chunk goes unnoticed there.

    A preparation again from text that gives the same token counts writes a byte-identical `index.json`, but other
    tokens in the chunks: both digests change. `python dev/data_fingerprint_speed.py` measures their cost at the start
    of a run (tutorials/pretrain_tinyllama.md). A listed chunk that is missing is refused in one line; an object-store
    folder is not read and not recorded."""
    from concurrent.futures import ThreadPoolExecutor

    contents = {}
    for folder in folders:
        if "://" in folder:
            continue
        index_file = Path(folder) / "index.json"
        index = json.loads(index_file.read_text(encoding="utf-8"))
        recorded = recorded_chunks(Path(folder))
        if recorded is not None:
            contents[folder] = _checked_contents(Path(folder), index_file, index, recorded, threads)
            continue
        plain = not index["config"].get("compression")  # a compressed chunk's bytes have no header at a known place
        chunks = [(Path(folder) / c["filename"], (c.get("chunk_size", 0) + 2) * 4 * plain) for c in index["chunks"]]
        digest = hashlib.sha256(index_file.read_bytes())
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for (path, _), sample in zip(chunks, pool.map(lambda chunk: _chunk_sample(*chunk), chunks)):
                if sample is None:
                    raise ValueError(_missing_chunk(path, index_file, folder))
                digest.update(path.name.encode() + sample)
        contents[folder] = digest.hexdigest()
    return contents


def _missing_chunk(path: Path, index_file: Path, folder) -> str:
    return (
        f"{path}, a chunk that {index_file} lists, is missing or unreadable: the folder is incomplete. "
        f"Prepare {folder} again"
    )


def _checked_contents(folder: Path, index_file: Path, index: dict, recorded: dict, threads: int) -> str:
    """The digest of `index_file` and of the chunk digests that `prepare.json` records (`recorded`), once the chunks
    are checked against them (see `data_contents`)."""
    from concurrent.futures import ThreadPoolExecutor

    manifest = folder / MANIFEST
    written = os.stat(manifest).st_mtime_ns  # after every chunk: a chunk modified since is newer
    digest = hashlib.sha256(index_file.read_bytes())
    newer = []
    for chunk in index["chunks"]:
        path = folder / chunk["filename"]
        record = recorded.get(chunk["filename"])
        if record is None:
            raise ValueError(
                f"{index_file} lists {path.name}, {manifest} records no digest of it: prepare {folder} again"
            )
        try:
            st = os.stat(path)
        except OSError:
            raise ValueError(_missing_chunk(path, index_file, folder)) from None
        if st.st_size != record["bytes"]:
            raise ValueError(
                _changed_chunk(path, f"holds {st.st_size:,} bytes, its preparation wrote {record['bytes']:,}")
            )
        if st.st_mtime_ns > written:
            newer.append((path, record["sha256"]))
        digest.update(path.name.encode() + bytes.fromhex(record["sha256"]))
    if len(newer) > 1:
        print(
            f"note: {len(newer)} chunks of {folder} are newer than its {MANIFEST} (copied without their modification "
            "times? `cp -p` and `rsync -a` keep them): reading them whole to check them against its digests"
        )
    if newer:
        with ThreadPoolExecutor(max(1, min(threads, len(newer)))) as pool:
            for (path, expected), actual in zip(newer, pool.map(lambda item: _whole_digest(item[0]), newer)):
                if actual is None:
                    raise ValueError(_missing_chunk(path, index_file, folder))
                if actual != expected:
                    raise ValueError(_changed_chunk(path, "was modified after its preparation: its SHA-256 differs"))
    return digest.hexdigest()


def _changed_chunk(path: Path, what: str) -> str:
    return (
        f"{path} {what} ({path.parent / MANIFEST}): its tokens are not those that were prepared. Prepare "
        f"{path.parent} again, or restore the chunk"
    )


def _whole_digest(path: Path) -> Optional[str]:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _chunk_sample(path: Path, header_bytes: int) -> Optional[bytes]:
    """The SHA-256 of a chunk's size and of the first and last `SAMPLE_BYTES` after its header; None if unreadable."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = header_bytes if header_bytes < size else 0
            head = os.pread(f.fileno(), SAMPLE_BYTES, start)
            tail = os.pread(f.fileno(), SAMPLE_BYTES, max(start, size - SAMPLE_BYTES))
    except OSError:
        return None
    return hashlib.sha256(size.to_bytes(8, "little") + head + tail).digest()


class DataWatch:
    """Notices a local data folder replaced (a preparation with `--overwrite true` renames a new folder in place) or
    its `index.json` rewritten while a run reads it: litdata opens each chunk by its name when it reaches it, so the
    run would go on with other data, without a word. `check` compares what `os.stat` says of them now with what it
    said when the watch began (a few `stat` calls, no read), and stops every process of the run in one line."""

    def __init__(self, folders: Sequence[str]) -> None:
        self.folders = [folder for folder in dict.fromkeys(folders) if "://" not in folder]
        self.seen = {folder: _identity(folder) for folder in self.folders}

    def changed(self) -> List[str]:
        return [folder for folder in self.folders if _identity(folder) != self.seen[folder]]

    def check(self, fabric) -> None:
        """Raise on every process (a `fabric` collective: call it on all of them at the same points) if a folder
        changed on any of them."""
        changed = self.changed()
        anywhere = fabric.all_reduce(torch.full((), float(bool(changed)), device=fabric.device), reduce_op="sum")
        if anywhere.item():
            which = ", ".join(changed) if changed else "a data folder of another process"
            raise ValueError(
                f"{which} changed while this run read it (prepared again, or its files replaced): the batches from "
                "here on would come from other data. Put the folder back as the run began with it and resume with "
                "--resume auto, or start a new run from the last checkpoint's weights with another --out_dir"
            )


def _identity(folder: str) -> tuple:
    """(device, inode) of `folder`, and (device, inode, size, modification time) of its index.json; None if gone."""
    identity = []
    for path, fields in ((Path(folder), 2), (Path(folder) / "index.json", 4)):
        try:
            st = os.stat(path)
            identity.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)[:fields])
        except OSError:
            identity.append(None)
    return tuple(identity)


def normalize(folder: str) -> str:
    """A local folder's normalized path (an object-store URL without its trailing slash)."""
    return folder.rstrip("/") if "://" in folder else os.path.normpath(folder)


def check_prepared(folders: Sequence[str], flag: str) -> None:
    """Fail early, naming them and the command that prepares them, if local `folders` hold no prepared litdata chunks:
    `--train_data` and `--val_data` take your own text (`scripts/prepare_text.py`), `--data_dir` SlimPajama and
    Starcoder."""
    missing = [f for f in folders if "://" not in f and not (Path(f) / "index.json").is_file()]
    if not missing:
        return

    def problem(folder: str) -> str:
        if not Path(folder).exists():
            return f"{folder} does not exist"
        if not Path(folder).is_dir():
            return f"{folder} is a file, not a folder of prepared chunks"
        prepared = sorted(sub.name for sub in Path(folder).iterdir() if (sub / "index.json").is_file())
        inside = f"; its sub-folders {', '.join(prepared)} do: name them" if prepared else ""
        return f"{folder} holds no prepared litdata chunks (no index.json){inside}"

    if flag == "--data_dir":
        how = (
            "Prepare it with scripts/prepare_slimpajama.py or scripts/prepare_starcoder.py "
            "(tutorials/pretrain_tinyllama.md)"
        )
    else:
        how = (
            "Prepare it with scripts/prepare_text.py: `python scripts/prepare_text.py --input <your files> "
            f"--output_dir {missing[0]} --tokenizer_path <tokenizer dir>` (tutorials/pretrain_custom_data.md)"
        )
    raise FileNotFoundError(f"{flag}: {'; '.join(map(problem, missing))}. {how}, or correct the path")


def data_separators(folders: Sequence[str], initial_checkpoint_dir: Optional[Path] = None) -> Separators:
    """The document-separator convention (`lit_gpt/data/separators.py`) that the local prepared `folders` share, from
    their `prepare.json` (a folder prepared before it was recorded counts as the default, eos after each document); a
    mix is refused, naming the folders of each convention. Object-store folders are not read: the local ones decide, and
    the default holds when there are none. A note says so when the weights of `initial_checkpoint_dir` were trained
    with another convention (TinyLlama's bos before each document, continued on eos-separated data)."""
    found: Dict[Separators, List[str]] = {}
    for folder in folders:
        if "://" not in folder:
            found.setdefault(prepared_separators(Path(folder)), []).append(folder)
    if len(found) > 1:
        groups = "; ".join(f"{', '.join(names)} with {separators}" for separators, names in found.items())
        raise ValueError(
            f"the data folders were prepared with different document separators: {groups}. The model would learn "
            "both; prepare them alike (the prepare scripts' --bos/--eos, see lit_gpt/data/separators.py)"
        )
    separators = next(iter(found), DEFAULT_SEPARATORS)
    if initial_checkpoint_dir is not None and (initial := read_separators(initial_checkpoint_dir)) != separators:
        print(
            f"Note: --initial_checkpoint_dir {initial_checkpoint_dir} was trained with {initial}, the data has "
            f"{separators}: the run teaches the model the data's. To keep the model's, prepare the data with "
            f"--bos {str(initial.bos).lower()} --eos {str(initial.eos).lower()}",
            file=sys.stderr,
        )
    return separators


def check_token_ids(folders: Sequence[str], vocab_size: int, model_name: str) -> None:
    """Refuse, before any work, local data that holds a token id that the model has no embedding for (`vocab_size`,
    its padded_vocab_size): data tokenized with a tokenizer of a larger vocabulary, which would fail at the step that
    reads it (an IndexError on CPU, a device-side assert on a GPU). The largest id is the one `prepare.json` records;
    for a folder prepared before it was recorded, the first chunk is read instead (a few MB: a tokenizer that does not
    fit shows in most chunks; an id of a later file alone is refused when a batch holds it, by `BatchIdCheck`)."""
    from litdata.constants import _NUMPY_DTYPES_MAPPING, _TORCH_DTYPES_MAPPING  # lazy: litdata is heavy (~2 s)

    for folder in folders:
        if "://" in folder:
            continue
        top = recorded_max_token_id(Path(folder))
        if top is not None:
            if top >= vocab_size:
                raise ValueError(
                    f"{folder} holds token id {top} ({MANIFEST}), but {model_name} has embeddings for {vocab_size:,} "
                    "ids (its padded_vocab_size): the data was tokenized with a tokenizer of a larger vocabulary. "
                    "Prepare it with the model's tokenizer, or use a model whose vocabulary holds the tokenizer's"
                )
            continue
        # prepared before prepare.json recorded its largest id: the first chunk, as before
        index = json.loads((Path(folder) / "index.json").read_text())
        serializer, code = index["config"]["data_format"][0].split(":")
        if not index["chunks"] or index["config"].get("compression") or not serializer.startswith("no_header_"):
            continue
        dtype = _NUMPY_DTYPES_MAPPING[int(code)] if serializer == "no_header_numpy" else None
        dtype = dtype or torch.empty(0, dtype=_TORCH_DTYPES_MAPPING[int(code)]).numpy().dtype
        chunk = index["chunks"][0]
        path = Path(folder) / chunk["filename"]
        # litdata's chunk header: the number of items and their offsets, as uint32
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=(chunk["chunk_size"] + 2) * 4)
        top = int(tokens.max()) if tokens.size else -1
        if top >= vocab_size:
            raise ValueError(
                f"{path} holds token id {top}, but --model_name {model_name} has embeddings for {vocab_size:,} ids "
                "(its padded_vocab_size): the data was tokenized with a tokenizer of a larger vocabulary. Prepare "
                "it with the model's tokenizer, or train a model whose vocabulary holds the tokenizer's"
            )


class BatchIdCheck:
    """The check of `check_token_ids` for folders it could not read whole: those prepared before `prepare.json`
    recorded the largest id (their first chunk alone was read) and object-store folders (not read). Called on the
    host with each batch of token ids read from them, it refuses one with an id that the model has no embedding for
    in one line naming those folders (training would stop at that step with an IndexError, or a device-side assert on
    a GPU). False, and never called, where every folder's largest id is recorded."""

    def __init__(self, folders: Sequence[str], vocab_size: int, model_name: str) -> None:
        self.folders = [f for f in folders if "://" in f or recorded_max_token_id(Path(f)) is None]
        self.vocab_size, self.model_name = vocab_size, model_name

    def __bool__(self) -> bool:
        return bool(self.folders)

    def __call__(self, batches: Sequence[torch.Tensor], fabric=None) -> None:
        """Refuse `batches` if one holds an id outside the vocabulary. With a `fabric` of several processes the answer
        is agreed (a collective: call it on every process at the same points, as a step's collectives are), so that
        every process stops with the line: one that stopped alone would leave the others failing in the step's
        collectives with a traceback. The agreement reads a flag back on the host, once per call: a wait for the
        device's queued work, paid only by the runs that read such folders."""
        bad = None
        for batch in batches:
            if not batch.numel():
                continue
            low, high = int(batch.min()), int(batch.max())
            if low < 0 or high >= self.vocab_size:
                bad = high if high >= self.vocab_size else low
                break
        if fabric is not None and fabric.world_size > 1:
            # the largest offending id of any process (a token id is exact in float64); -inf where none
            mine = torch.tensor([-math.inf if bad is None else float(bad)], dtype=torch.float64, device=fabric.device)
            agreed = fabric.all_reduce(mine, reduce_op="max").item()
            bad = None if agreed == -math.inf else int(agreed)
        if bad is not None:
            which = self.folders[0] if len(self.folders) == 1 else f"one of {', '.join(self.folders)}"
            raise ValueError(
                f"a batch holds token id {bad}, but {self.model_name} has embeddings for {self.vocab_size:,} ids "
                f"(0 to {self.vocab_size - 1}): it comes from {which}, whose largest id no {MANIFEST} records "
                "(prepared before it was recorded: only the first chunk was checked at the start). Prepare it "
                "again with the model's tokenizer (the prepare scripts' --tokenizer_path, --overwrite true): the "
                "preparation then records and checks every id"
            )

    def batches(self, iterator: Iterable[torch.Tensor], fabric=None) -> Iterator[torch.Tensor]:
        """`iterator`'s batches, each checked (agreed among the processes of `fabric`, as `__call__`)."""
        for batch in iterator:
            self([batch], fabric)
            yield batch


def data_eos_id(folders: Sequence[str], eos_id: Optional[int], vocab_size: int) -> int:
    """The end-of-document id a document mask splits at: the one the prepare.json of the local `folders` records, or
    `eos_id` (`--eos_id`) for data that records none; refused if they disagree (folders among themselves, or with
    `eos_id`), if none is known, or it is not a token id of the model, and for folders prepared without an eos after
    each document (`--eos false`), which have none to split at."""
    no_eos = [folder for folder in folders if "://" not in folder and not prepared_separators(Path(folder)).eos]
    if no_eos:
        raise ValueError(
            f"--document_mask splits documents at their eos token, and {', '.join(no_eos)} hold none (prepared with "
            "--eos false): prepare them with --eos true (with --bos true too to keep bos before each document)"
        )
    recorded = {folder: value for folder in folders if (value := _recorded_eos_id(folder, vocab_size)) is not None}
    if len(set(recorded.values())) > 1:
        raise ValueError(
            f"--document_mask: the data folders were prepared with different end-of-document ids ({recorded}); "
            "prepare them with one tokenizer"
        )
    if eos_id is not None and recorded and eos_id not in recorded.values():
        folder, value = next(iter(recorded.items()))
        raise ValueError(
            f"--eos_id {eos_id}: {folder}/prepare.json records {value} as the id written after each document; leave "
            "--eos_id out to split there"
        )
    if eos_id is None:
        if not recorded:
            raise ValueError(
                f"--document_mask: no prepare.json in {', '.join(folders)} records the end-of-document id (data "
                "prepared before it was recorded, or in an object store): pass --eos_id (the eos id of the tokenizer "
                "the data was prepared with: 2 for Llama's)"
            )
        eos_id = next(iter(recorded.values()))
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"--eos_id {eos_id} is not a token id of the model (0..{vocab_size - 1})")
    return eos_id


def _recorded_eos_id(folder: str, vocab_size: int) -> Optional[int]:
    """The `eos_id` of a local folder's prepare.json; None for an object store, no prepare.json or none recorded."""
    value = _prepare_record(folder).get("eos_id")
    if value is not None and (type(value) is not int or not 0 <= value < vocab_size):
        raise ValueError(
            f"{Path(folder) / 'prepare.json'} records eos_id {value!r}, not a token id of the model "
            f"(0..{vocab_size - 1}): prepare {folder} again (with the model's tokenizer)"
        )
    return value


def _prepare_record(folder: str) -> dict:
    """A local folder's prepare.json (`lit_gpt.data.prepare`); empty for an object store or a folder without one."""
    manifest = Path(folder) / "prepare.json"
    if "://" in folder or not manifest.is_file():
        return {}
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest} cannot be read ({e}): prepare {folder} again") from None
    return record if isinstance(record, dict) else {}


def vocab_note(folders: Sequence[str], vocab_size: int, model_name: str) -> Optional[str]:
    """A note when the model has more token ids than the tokenizer that the local `folders` were prepared with (the
    `vocab_size` their prepare.json records): the others never occur in training, which only generation would show."""
    recorded = {folder: size for folder in folders if type(size := _prepare_record(folder).get("vocab_size")) is int}
    if not recorded:  # an object store, or data prepared before the size was recorded
        return None
    folder, tokens = max(recorded.items(), key=lambda item: item[1])
    if vocab_size <= tokens:
        return None
    return (
        f"Note: --model_name {model_name} has {vocab_size:,} token ids, the tokenizer of the data {tokens:,} "
        f"({folder}/prepare.json): the other {vocab_size - tokens:,} never occur in training and their embeddings "
        f"only take memory (generation samples the tokenizer's ids alone). A model config with vocab_size={tokens} "
        "(lit_gpt/config.py) has none of them"
    )


def join(data_dir: str, sub: str) -> str:
    return f"{data_dir.rstrip('/')}/{sub}" if "://" in data_dir else str(Path(data_dir) / sub)


def train_dataloader(
    data_dir: str, weights: Sequence[float], block_size: int, batch_size: int, num_workers: int, seed: int
):
    """Shuffled slimpajama/train and starcoder of `data_dir`, sampled with `weights` (`mixture_dataloader`)."""
    return mixture_dataloader(data_sources(data_dir, weights)[0], block_size, batch_size, num_workers, seed)


def mixture_dataloader(
    sources: Sequence[Tuple[str, float]], block_size: int, batch_size: int, num_workers: int, seed: int
):
    """The (folder, weight) `sources`, each shuffled, each batch row drawn from a source with probability its weight's
    share, in batches of (batch_size, block_size + 1)."""
    # lazy: litdata is heavy (~2 s to import), and the checks above run before any loader is built
    from litdata.streaming import CombinedStreamingDataset, StreamingDataset, TokensLoader

    datasets = [
        StreamingDataset(input_dir=folder, item_loader=TokensLoader(block_size=block_size + 1), shuffle=True, seed=seed)
        for folder, _ in sources
    ]
    for (folder, weight), dataset in zip(sources, datasets):
        if weight > 0 and len(dataset) == 0:  # it would be left out of the mix without a word
            raise ValueError(
                f"--train_data: {folder} holds no block of {block_size + 1} tokens (--block_size {block_size} + 1) "
                f"for this process, so its weight {weight:g} would go to the other sources. Prepare more data into "
                "it, or leave it out of the mix"
            )
    weights = [w for _, w in sources]
    end_children_at_exit()  # a run that ends with an exception must not wait for the workers (lit_gpt.signals)
    combined = CombinedStreamingDataset(datasets=datasets, seed=seed, weights=weights, iterate_over_all=False)
    return _streaming_loader(combined, batch_size, num_workers, seed)


def val_dataloader(folder: str, block_size: int, batch_size: int, num_workers: int):
    """The validation folder in order, in batches of (batch_size, block_size + 1); every process gets as many."""
    from litdata.streaming import StreamingDataset, TokensLoader  # lazy: heavy, as above

    dataset = StreamingDataset(
        input_dir=folder, item_loader=TokensLoader(block_size=block_size + 1), shuffle=False, drop_last=True
    )
    end_children_at_exit()
    return _streaming_loader(dataset, batch_size, num_workers, 0)


def _streaming_loader(dataset, batch_size: int, num_workers: int, seed: int):
    """litdata's loader of `dataset` in full batches, its workers left out of the stop signals (the training process's
    to handle: lit_gpt.signals)."""
    from litdata.streaming import StreamingDataLoader  # lazy: heavy, as above

    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        pin_memory=torch.cuda.is_available(),
        num_workers=num_workers,
        drop_last=True,
        worker_init_fn=ignore_stop_signals,
        # a generator of its own: each iterator draws its workers' base seed from it, not from torch's global one,
        # whose state a checkpoint saves; a resumed run starts an iterator (a validation's, or the training loader's)
        # that the uninterrupted run did not, and the state saved after it differed from that run's by this draw (the
        # data is the same: litdata's order comes from the datasets' seed)
        generator=torch.Generator().manual_seed(seed),
    )


def cycle_full_batches(loader: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """The loader's batches epoch after epoch, without the short ones.

    With worker processes, litdata ends each worker's share of an epoch with a short batch although `drop_last` is
    set (with 4 workers, ~4 short batches per epoch). A short micro-batch makes `torch.compile` recompile for the new
    shape and puts fewer tokens in the step than it counts; skipping them loses fewer than `batch_size` sequences per
    worker and epoch. The loader's `state_dict()` still records every batch it yielded, so a resumed run continues
    after the same batch (exactly so with up to one worker; with more, litdata may yield a few rows of the
    interrupted epoch again).
    """
    passes_without_full_batch = 0
    while True:
        for batch in loader:
            if batch.size(0) == batch_size:
                passes_without_full_batch = 0
                yield batch
        passes_without_full_batch += 1
        # the first pass of a resumed loader is the rest of its epoch, which may hold no full batch: the next is whole
        if passes_without_full_batch == 2:
            raise RuntimeError(
                f"An epoch of the training data has no full batch of {batch_size} sequences: the data set is smaller "
                "than one micro-batch per process and loader worker. Prepare more data, or lower --micro_batch_size "
                "or --num_workers."
            )
