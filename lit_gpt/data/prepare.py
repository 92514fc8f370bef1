"""The data preparation engine of `scripts/prepare_slimpajama.py`, `scripts/prepare_starcoder.py` and
`scripts/prepare_text.py`: the documents of the input files (read by `lit_gpt/data/readers.py`) tokenized in batches
by worker processes into litdata chunks that `litdata.StreamingDataset(..., item_loader=TokensLoader(block_size))`
reads, written into a folder of their own with the record of what was written (`prepare.json`).

Nothing is dropped silently: every row that is not turned into tokens is counted by reason, and a row that could not
be read is reported with its file and line (row, for parquet).
"""

import fnmatch
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from lit_gpt.cli import UserError
from lit_gpt.data.readers import (
    PATTERNS,
    READERS,
    BadRecord,
    Kind,
    PrepareError,
    Stats,
    find_files,
    find_inputs,
    input_roots,
    read_documents,
)
from lit_gpt.data.separators import DEFAULT_SEPARATORS, Separators, check_tokenizer, document_ends, encode_documents
from lit_gpt.files import file_sha256, recover_replaced, refused_writes, replace_dir, staging_dir, write_failure
from lit_gpt.signals import die_with_parent
from lit_gpt.tokenizer import Tokenizer

BLOCK_SIZE = 2049  # one TinyLlama training sequence: 2048 inputs + 1 shifted target
BATCH_CHARS = 1 << 20  # characters of text per tokenizer call
PIECE_CHARS = 1 << 18  # a longer document is encoded in pieces of about this many characters (see encode_long)
MAX_PIECE_CHARS = 1 << 19  # and none longer than this (split_at_spaces)
MAX_LISTED_BAD_RECORDS = 20
MANIFEST = "prepare.json"  # written into every output directory: what the preparation wrote there


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing into litdata chunks
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer(tokenizer_dir: str) -> Tokenizer:
    # one per worker process, loaded on its first file
    return Tokenizer(tokenizer_dir)


def tokenize_files(
    paths: List[str],
    kind: Kind,
    tokenizer_dir: str,
    item_tokens: int,
    progress: Optional[multiprocessing.Queue] = None,
    parent_pid: Optional[int] = None,
    reader: Optional[Callable[[Path, Stats], Iterator[str]]] = None,
    separators: Separators = DEFAULT_SEPARATORS,
) -> Iterator[torch.Tensor]:
    """The litdata work function: one worker's input files -> int32 token items of `item_tokens` tokens (a file's
    last one shorter).

    Documents are encoded with `bos` and/or `eos` as `separators` says (`lit_gpt/data/separators.py`; by default `eos`
    after each, lit-gpt's convention), many per tokenizer call; the tokens of a file form one stream that is cut into
    equal items, so that chunks of a multiple of `item_tokens` fill up exactly.
    `parent_pid`: the preparing process, which this worker must not outlive. `reader` reads a file's documents
    (default: the reader of `kind`).
    """
    if parent_pid is not None:
        die_with_parent(parent_pid)
    tokenizer = _tokenizer(tokenizer_dir)
    pending = np.empty(0, dtype=np.int32)
    before, after = (np.asarray(ids, dtype=np.int32) for ids in document_ends(tokenizer, separators))

    def encode(texts: List[str], stats: Stats) -> Iterator[torch.Tensor]:
        ids = encode_documents(tokenizer, texts, separators)
        count = sum(len(i) for i in ids)
        yield from emit(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=count), len(texts), stats)

    def emit(stream: np.ndarray, documents: int, stats: Stats) -> Iterator[torch.Tensor]:
        nonlocal pending
        top = int(stream.max()) if len(stream) else -1
        stats.documents += documents
        stats.tokens += len(stream)
        stats.max_id = max(stats.max_id, top)
        if progress is not None:
            progress.put(("progress", Stats(documents=documents, tokens=len(stream), max_id=top)))
        pending = np.concatenate([pending, stream]) if len(pending) else stream
        full = len(pending) // item_tokens * item_tokens
        for start in range(0, full, item_tokens):
            yield torch.from_numpy(pending[start : start + item_tokens].copy())
        pending = pending[full:]

    for path in paths:
        stats = Stats(files=1)  # this file's counts; the skipped and bad rows are recorded by the reader
        batch, chars = [], 0
        for text in (reader or READERS[kind])(Path(path), stats):
            if len(text) > PIECE_CHARS:  # in pieces: a tokenizer takes ~50 bytes of memory per character
                if batch:
                    yield from encode(batch, stats)
                    batch, chars = [], 0
                documents = 1  # counted with its first piece; the tokens of each piece are cut into items at once
                for ids in itertools.chain([before], encode_long(tokenizer, text), [after]):
                    yield from emit(ids, documents, stats)
                    documents = 0
                continue
            batch.append(text)
            chars += len(text)
            if chars >= BATCH_CHARS:
                yield from encode(batch, stats)
                batch, chars = [], 0
        if batch:
            yield from encode(batch, stats)
        if progress is not None:
            # documents and tokens were reported batch by batch
            progress.put(("file", Stats(files=1, skipped=stats.skipped, bad=stats.bad)))
        if len(pending):
            yield torch.from_numpy(pending.copy())
            pending = pending[:0]


def encode_long(tokenizer: Tokenizer, text: str, piece_chars: Optional[int] = None) -> Iterator[np.ndarray]:
    """The tokens of one long document (no eos), piece by piece (int32 arrays, so that no more than one piece's
    Python list of ids is held), encoded in pieces of about `piece_chars` characters, each cut before a single space
    between two non-space characters.

    For SentencePiece models that keep whitespace as it is and split pieces at it (Llama's, train_tokenizer.py's) the
    tokens are those of one call: no token spans such a space, and each piece after the first is encoded without the
    "▁" that SentencePiece puts before a text (it starts with the space instead). Other SentencePiece models encode
    the document in one call. A `tokenizer.json` tokenizer encodes each piece as a text of its own, which differs from
    one call only where it treats the start of a text specially (a Metaspace pre-tokenizer that prepends "▁").
    """
    pieces = split_at_spaces(text, piece_chars or PIECE_CHARS)
    if tokenizer.backend != "sentencepiece":
        for piece in pieces:
            yield np.asarray(tokenizer.encode_ids(piece), dtype=np.int32)
        return
    continuation = _continuation_processor(tokenizer.processor.serialized_model_proto())
    if continuation is None:
        yield np.asarray(tokenizer.processor.encode(text), dtype=np.int32)
        return
    for i, piece in enumerate(pieces):
        yield np.asarray((continuation if i else tokenizer.processor).encode(piece), dtype=np.int32)


def split_at_spaces(text: str, piece_chars: int, max_chars: Optional[int] = None) -> Iterator[str]:
    """`text` cut into pieces of about `piece_chars` characters, one at a time, each cut before a single space between
    two non-space characters, the first after `piece_chars` where there is none before. Where a piece would pass
    `max_chars` (default `MAX_PIECE_CHARS`) without such a space (a line of 20 MB without spaces: one piece took 1.4 GB
    to encode), it is cut at `piece_chars` characters instead, so that the memory of a piece stays bounded; its tokens
    may then differ from one call's around the cut, as a token can span it (the text they decode to is the same)."""
    max_chars = MAX_PIECE_CHARS if max_chars is None else max_chars
    start = 0
    while len(text) - start > piece_chars:
        cut = _single_space(text, start + 1, start + piece_chars, backwards=True)
        cut = cut or _single_space(text, start + piece_chars, start + max(max_chars, piece_chars), backwards=False)
        cut = cut or start + piece_chars
        yield text[start:cut]
        start = cut
    yield text[start:]


def _single_space(text: str, lo: int, hi: int, backwards: bool) -> Optional[int]:
    i = text.rfind(" ", lo, hi) if backwards else text.find(" ", lo, hi)
    while i > 0:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", lo, i) if backwards else text.find(" ", i + 1, hi)
    return None


@functools.lru_cache(maxsize=1)
def _continuation_processor(model_proto: bytes):
    """The SentencePiece model without its dummy prefix, for the pieces after the first of a long document; None for a
    model with which pieces would not encode as the whole (see `encode_long`)."""
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2  # lazy: protobuf, for long documents

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    if (
        model.normalizer_spec.remove_extra_whitespaces
        or not model.trainer_spec.split_by_whitespace
        or model.trainer_spec.treat_whitespace_as_suffix
    ):
        return None
    model.normalizer_spec.add_dummy_prefix = False
    return SentencePieceProcessor(model_proto=model.SerializeToString())


def assign_files(files: List[Path], num_workers: int) -> List[List[str]]:
    """The input files of each worker: the largest file first to the least loaded worker (bytes; ties to the lower
    worker), each worker's files in name order. The same files and worker count give the same assignment, so that a
    preparation run twice writes the same chunks (litdata's shared work queue hands files to whichever worker is
    free first)."""
    bins: List[List[str]] = [[] for _ in range(num_workers)]
    loads = [0] * num_workers
    for size, path in sorted(((f.stat().st_size, str(f)) for f in files), key=lambda x: (-x[0], x[1])):
        worker = min(range(num_workers), key=lambda w: (loads[w], w))
        bins[worker].append(path)
        loads[worker] += size
    return [sorted(b) for b in bins if b]


def item_tokens_for(chunk_size: int, target: int = BLOCK_SIZE * 8) -> int:
    """The largest divisor of `chunk_size` up to `target` tokens: items of that size fill chunks exactly."""
    for d in range(min(target, chunk_size), 0, -1):
        if chunk_size % d == 0 and d >= min(1024, chunk_size):
            return d
    return min(chunk_size, BLOCK_SIZE)


def prepare(
    kind: Kind,
    input_dir: Path,
    output_dir: str,
    tokenizer_path: Path,
    chunk_size: int,
    fast_dev_run: bool = False,
    num_workers: Optional[int] = None,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
    inputs: Optional[List[str]] = None,
    text_options=None,
    bos: bool = False,
    eos: bool = True,
) -> Stats:
    """Tokenize every file of a SlimPajama or Starcoder folder into litdata chunks; see the scripts for the options.
    `bos`, `eos`: put the tokenizer's bos token before each document, its eos token after it, or both
    (`lit_gpt/data/separators.py`); recorded in `prepare.json`.
    With `kind="text"`, the files of `inputs` (folders, glob patterns, files; `lit_gpt.data.readers.find_inputs`) are
    read as `text_options` (a `lit_gpt.data.readers.TextOptions`) says, and `input_dir` is not used.

    A local `output_dir` is written as a hidden sibling folder that is renamed into place when the chunks are complete,
    so that neither a killed run nor a stale writer can change a finished output. The same files, options and worker
    count give byte-identical chunks and `index.json`.

    Raises `PrepareError` with a message for the user when the options or the inputs are wrong, or, unless
    `skip_bad_records`, when some rows or files could not be read (after writing everything else).
    """
    # lazy: litdata is heavy (~2 s to import), needed only once the inputs are checked
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    t0 = time.perf_counter()
    if num_workers is not None and num_workers < 1:  # `or os.cpu_count()` below would take 0 for the default
        raise PrepareError(f"--num_workers {num_workers} must be at least 1; leave it out for one per CPU core")
    if not bos and not eos:
        raise PrepareError(
            "--bos false --eos false would lay the documents end to end with nothing between them; keep --eos true "
            "(the default), or pass --bos true"
        )
    separators = Separators(bos=bos, eos=eos)
    tokenizer_path = check_tokenizer_dir(tokenizer_path, separators)
    tokenizer = _tokenizer(str(tokenizer_path))
    id_limit = token_id_limit(tokenizer)
    for name in ("bos", "eos"):
        value = getattr(tokenizer, f"{name}_id")
        if getattr(separators, name) and not (isinstance(value, int) and 0 <= value < id_limit):
            raise PrepareError(
                f"the tokenizer in {tokenizer_path} says {name}_token_id {value!r} (its "
                f"generation_config.json or tokenizer_config.json), not a token id of its vocabulary (0 to "
                f"{id_limit - 1}): correct it there"
            )
    if chunk_size < 1:
        raise PrepareError(f"--chunk_size {chunk_size} must be a positive number of tokens, e.g. {BLOCK_SIZE * 1024}")
    problems: List[BadRecord] = []
    reader = None
    if kind == "text":
        files = find_inputs(inputs or [], problems if skip_bad_records else None)
        reader = functools.partial(read_documents, options=text_options)
        named_inputs = {f"--input {item}": root for item, root in input_roots(inputs or [])}
        input_dir = Path(" ".join(inputs or []))  # for the messages and prepare.json
    else:
        files = find_files(input_dir, kind, problems if skip_bad_records else None)
        named_inputs = {"--input_dir": input_dir}
    if fast_dev_run:
        files = files[:2]  # a few files: a quick end-to-end check of the whole pipeline
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(files)))
    local = "://" not in str(output_dir)
    if local:
        recover_replaced(Path(output_dir), _remove_old)  # a replacement that a killed run left half done
        check_output_dir(Path(output_dir), overwrite, {**named_inputs, "--tokenizer_path": tokenizer_path}, separators)
        check_inputs_outside(Path(output_dir), files)
        with refused_writes(Path(output_dir)):  # a read-only disk or a parent folder of another user
            write_dir = str(_staging_dir(Path(output_dir)))
    else:  # object stores: litdata itself refuses a non-empty prefix unless told to overwrite
        write_dir = str(output_dir)

    progress = multiprocessing.get_context("spawn").Queue()
    stats = Stats()
    for problem in problems:  # inputs left out under --skip_bad_records
        stats.skip(problem)
    monitor = threading.Thread(
        target=_monitor,
        args=(progress, stats, len(files), verbose, f"{kind} {Path(output_dir if kind == 'text' else input_dir).name}"),
        daemon=True,
    )
    monitor.start()
    try:
        try:
            workers_files = assign_files(files, num_workers)
            fn = functools.partial(
                tokenize_files,
                kind=kind,
                tokenizer_dir=str(tokenizer_path),
                item_tokens=item_tokens_for(chunk_size),
                progress=progress,
                parent_pid=os.getpid(),
                reader=reader,
                separators=separators,
            )
            if local:
                write_chunks(fn, workers_files, write_dir, chunk_size)
            else:
                optimize(
                    fn=fn,
                    inputs=workers_files,  # one item per worker: its files
                    output_dir=write_dir,
                    num_workers=len(workers_files),
                    chunk_size=chunk_size,
                    item_loader=TokensLoader(),
                    reorder_files=False,
                    keep_data_ordered=True,  # worker i processes item i and writes `chunk-<i>-<n>.bin`
                    mode="overwrite" if overwrite else None,
                    verbose=False,
                )
        finally:
            progress.put(("done", None))
            monitor.join()
        stats.elapsed = time.perf_counter() - t0
        written = chunk_tokens(write_dir)
        if written is not None and sum(written) != stats.tokens:
            raise PrepareError(
                f"{write_dir}/index.json lists {sum(written):,} tokens but {stats.tokens:,} were encoded; the chunks "
                "are incomplete"
            )
        if stats.files < len(files):
            raise PrepareError(
                f"only {stats.files} of the {len(files)} input files were tokenized: a worker failed (its error is "
                f"above); nothing was written to {output_dir}"
            )
        if stats.tokens == 0:
            for record in stats.bad[:MAX_LISTED_BAD_RECORDS]:
                print(f"bad record: {record}")
            raise PrepareError(
                f"{'--input' if kind == 'text' else '--input_dir'} {input_dir}: its {stats.files} "
                f"{PATTERNS.get(kind, 'input')} files hold no documents to tokenize "
                f"(left out: {_left_out(stats)}); nothing was written to {output_dir}"
            )
        if not stats.max_id < id_limit:  # the separators were checked above; the tokenizer's own ids are its own
            raise PrepareError(
                f"token id {stats.max_id} was written, outside the vocabulary of the tokenizer in {tokenizer_path} (0 "
                f"to {id_limit - 1}); nothing was written to {output_dir}"
            )
        if local:
            ids = {
                f"{name}_id": getattr(tokenizer, f"{name}_id") for name in ("bos", "eos") if getattr(separators, name)
            }
            _finish(Path(write_dir), kind, input_dir, stats, separators, ids, tokenizer.vocab_size)
            publish(Path(write_dir), Path(output_dir), overwrite)
    except Exception as e:
        if local and (refusal := write_failure(e, Path(output_dir))) is not None:  # a full disk, in this process
            raise refusal from None
        raise
    finally:
        if local and Path(write_dir).exists():  # a failed run: nothing of it is kept
            shutil.rmtree(write_dir, ignore_errors=True)
    if verbose:
        print_summary(stats, output_dir)
    if stats.bad and not skip_bad_records:
        raise PrepareError(
            f"{len(stats.bad)} records could not be read (listed above) and are not in {output_dir}. Fix or remove "
            "those files and run again with --overwrite true, or accept the loss: --skip_bad_records true "
            "--overwrite true."
        )
    return stats


def write_chunks(fn: Callable, workers_files: List[List[str]], write_dir: str, chunk_size: int) -> None:
    """`litdata.optimize` into a new local folder, worker i processing `workers_files[i]`, without the helper process
    that optimize starts in each worker to delete downloaded copies of the inputs (there are none here; starting one
    costs a Python interpreter with torch per worker, seconds on a small machine)."""
    from litdata.processing.data_processor import DataProcessor  # lazy: heavy, as in prepare
    from litdata.processing.functions import LambdaDataChunkRecipe
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.resolver import _resolve_dir

    processor = DataProcessor(
        input_dir=_resolve_dir(None),
        output_dir=_resolve_dir(write_dir),
        num_workers=len(workers_files),
        delete_cached_files=False,
        reorder_files=False,
        state_dict=dict.fromkeys(range(len(workers_files)), 0),
        item_loader=TokensLoader(),
        keep_data_ordered=True,  # worker i processes item i and writes `chunk-<i>-<n>.bin`
        verbose=False,
    )
    processor.run(LambdaDataChunkRecipe(fn, workers_files, chunk_size=chunk_size, chunk_bytes=None, compression=None))


def chunk_tokens(output_dir: str) -> Optional[List[int]]:
    """Tokens per chunk, from a local output directory's `index.json` (None for object stores)."""
    index = Path(output_dir) / "index.json"
    if "://" in str(output_dir) or not index.is_file():
        return None
    return [chunk["dim"] for chunk in json.loads(index.read_text())["chunks"]]


# ---------------------------------------------------------------------------------------------------------------------
# The output directory: only a preparation's own output is ever replaced
# ---------------------------------------------------------------------------------------------------------------------


def check_output_dir(
    path: Path, overwrite: bool, inputs: Dict[str, Path], separators: Optional[Separators] = None
) -> None:
    """Refuse an output directory that overlaps an input (`inputs`: flag -> path) or holds anything but an earlier
    preparation's output (`--overwrite true` replaces that, and only that; the refusal without it names an earlier
    separator convention that differs from `separators`)."""
    resolved = path.resolve()
    for flag, other in inputs.items():
        other = Path(other).resolve()
        if resolved == other or resolved in other.parents or other in resolved.parents:
            relation = "is" if resolved == other else "contains" if resolved in other.parents else "is inside"
            raise PrepareError(
                f"--output_dir {path} {relation} {flag} {other}; the chunks must go to a folder of their own, outside "
                f"the inputs (such as data/slimpajama/train or data/starcoder)"
            )
    if path.exists() and not path.is_dir():
        raise PrepareError(f"--output_dir {path} is a file; pick a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return
    foreign = foreign_files(path)
    if foreign:
        chunks = all(fnmatch.fnmatch(name, "chunk-*.bin") or name == "index.json" for name in foreign)
        hint = " (chunks from before prepare.json was written: delete them yourself)" if chunks else ""
        raise PrepareError(
            f"--output_dir {path} holds {foreign[0]}, which no preparation wrote there (no {MANIFEST} lists it){hint}; "
            "pick an empty or new --output_dir (--overwrite true replaces only an earlier preparation's output)"
        )
    if not overwrite:
        try:
            earlier = prepared_separators(path)
        except UserError:  # a garbled record: the refusal below says enough
            earlier = separators
        other = f", with {earlier} (this run: {separators})" if separators and earlier != separators else ""
        raise PrepareError(
            f"--output_dir {path} holds an earlier preparation ({MANIFEST}{other}); pick another --output_dir, or pass "
            "--overwrite true to replace it"
        )


def check_inputs_outside(path: Path, files: List[Path]) -> None:
    """Refuse an output directory that holds an input file (one reached through a symbolic link, too)."""
    resolved = path.resolve()
    for f in files:
        if resolved in f.resolve().parents:
            raise PrepareError(f"--output_dir {path} holds the input file {f}; pick an --output_dir outside the inputs")


def foreign_files(path: Path) -> List[str]:
    """The entries of an output directory that its `prepare.json` does not list (all of them without one)."""
    owned = set(owned_files(path)) | {MANIFEST}
    return sorted(p.name for p in path.iterdir() if p.name not in owned or p.is_symlink() or not p.is_file())


def owned_files(path: Path) -> List[str]:
    """The files of an output directory that its `prepare.json` lists and that a preparation writes (`index.json`,
    `chunk-<worker>-<n>.bin`): a hand-edited or forged list names no other file, in or outside the folder."""
    try:
        listed = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(listed, list):
        return []
    return [name for name in listed if isinstance(name, str) and OUTPUT_FILE.fullmatch(name)]


OUTPUT_FILE = re.compile(r"index\.json|chunk-\d+-\d+\.bin")  # the files a preparation writes


def _staging_dir(path: Path) -> Path:
    """A fresh hidden sibling of `path` for the workers to write into (`lit_gpt/files.py: staging_dir`)."""
    return staging_dir(path)


def token_id_limit(tokenizer: Tokenizer) -> int:
    """One more than the largest token id `tokenizer` has, added special tokens of a tokenizer.json included."""
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.get_vocab_size(with_added_tokens=True)
    return tokenizer.vocab_size


def recorded_max_token_id(path: Path) -> Optional[int]:
    """The largest token id a prepared folder holds, as its `prepare.json` records it; None for a folder prepared
    before it was recorded (or without a readable record)."""
    try:
        value = json.loads((Path(path) / MANIFEST).read_text()).get("max_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_manifest(path: Path) -> dict:
    """A prepared folder's `prepare.json`: {} where there is none (a folder prepared before it was written) or where it
    holds no mapping; one that cannot be read is refused (what it records would be a guess)."""
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_path} cannot be read ({e}): prepare {path} again") from None
    return manifest if isinstance(manifest, dict) else {}


def prepared_separators(path: Path) -> Separators:
    """The separator convention recorded in a prepared folder's `prepare.json`; the default (eos after each document)
    for a folder prepared before it was recorded, or without a `prepare.json`. One that cannot be read is refused: the
    default would be a guess (a bos-only preparation read as eos, and its model prompted so)."""
    recorded = read_manifest(path).get("separators")
    return DEFAULT_SEPARATORS if recorded is None else Separators.from_dict(recorded, str(Path(path) / MANIFEST))


def _finish(
    write_dir: Path,
    kind: Kind,
    input_dir: Path,
    stats: Stats,
    separators: Separators,
    separator_ids: Dict[str, int],
    vocab_size: int,
) -> None:
    """Make `index.json` reproducible and list what was written in `prepare.json`."""
    index_path = write_dir / "index.json"
    index = json.loads(index_path.read_text())
    # litdata stamps the write time; its readers only compare the stamp to notice a changed dataset: a digest of the
    # index does that, and is the same for the same chunks
    index.pop("updated_at", None)
    index["updated_at"] = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]
    index_path.write_text(json.dumps(index, sort_keys=True))
    manifest = {
        "prepared_by": "lit_gpt.prepare",
        "kind": kind,
        "input_dir": str(input_dir),
        "documents": stats.documents,
        "tokens": stats.tokens,
        "separators": separators.to_dict(),  # lit_gpt/data/separators.py
        **separator_ids,  # the ids written between documents: "eos_id" is what `pretrain --document_mask` splits at
        "vocab_size": vocab_size,  # the tokenizer's: pretraining notes a model of more token ids than it has
        "max_token_id": stats.max_id,  # the largest id in the chunks: a model must have an embedding for it
        "files": sorted(p.name for p in write_dir.iterdir()),
        # every chunk's size and SHA-256: a run checks the chunks against them (`lit_gpt.data.loaders.data_contents`)
        "chunks": chunk_digests(write_dir, [chunk["filename"] for chunk in index["chunks"]]),
    }
    (write_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def chunk_digests(folder: Path, names: List[str], threads: int = 8) -> Dict[str, Dict[str, object]]:
    """chunk name -> {"bytes": its size, "sha256": the SHA-256 of the whole file}, of the chunks `names` in `folder`,
    read in `threads` threads (hashlib lets go of the GIL while it hashes): what `prepare.json` records, so that a
    chunk edited after the preparation is noticed however little of it changed."""
    from concurrent.futures import ThreadPoolExecutor

    def record(name: str) -> Dict[str, object]:
        return {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}

    with ThreadPoolExecutor(max(1, min(threads, len(names)))) as pool:
        return dict(zip(names, pool.map(record, names)))


def recorded_chunks(path: Path) -> Optional[Dict[str, Dict[str, object]]]:
    """The chunk sizes and digests that a prepared folder's `prepare.json` records (`chunk_digests`); None for a folder
    prepared before they were recorded, or without a `prepare.json`. A record that cannot be read is refused."""
    manifest_path = Path(path) / MANIFEST
    chunks = read_manifest(path).get("chunks")
    if chunks is None:
        return None
    valid = isinstance(chunks, dict) and all(
        isinstance(r, dict)
        and isinstance(r.get("bytes"), int)
        and isinstance(r.get("sha256"), str)
        and re.fullmatch("[0-9a-f]{64}", r["sha256"])
        for r in chunks.values()
    )
    if not valid:
        raise UserError(f"{manifest_path} records its chunks in a form no preparation writes: prepare {path} again")
    return chunks


def publish(write_dir: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished `write_dir` to `path`, replacing an earlier preparation there if `overwrite`: the earlier
    one stays whole until the new one is in place (`lit_gpt/files.py: replace_dir`)."""
    if path.is_dir() and any(path.iterdir()):
        check_output_dir(path, overwrite, {})  # again: another run may have written there meanwhile
    replace_dir(write_dir, path, _remove_old)


def _remove_old(old: Path) -> None:
    """Delete an earlier preparation renamed aside: only the files that its prepare.json lists (checked before)."""
    for name in owned_files(old) + [MANIFEST]:
        (old / name).unlink(missing_ok=True)
    try:
        old.rmdir()
    except OSError:
        print(f"note: left {old}: files appeared in it that no preparation wrote")


def check_tokenizer_dir(tokenizer_path: Path, separators: Separators = DEFAULT_SEPARATORS) -> Path:
    """The tokenizer directory, checked before the workers start (they would each fail on it with a traceback).

    A path that does not exist is taken to mean the one `<parent>/<org>/<name>` with a tokenizer that has its name, if
    there is exactly one: the tutorials' `checkpoints/Llama-2-7b-hf` is where `scripts/download.py` writes
    `checkpoints/meta-llama/Llama-2-7b-hf`.
    """
    tokenizer_path = Path(tokenizer_path)
    # download.py writes `checkpoints/<org>/<name>`
    candidates = [p for p in sorted(tokenizer_path.parent.glob(f"*/{tokenizer_path.name}")) if _has_tokenizer(p)]
    if not tokenizer_path.exists() and len(candidates) == 1:
        print(
            f"--tokenizer_path {tokenizer_path} does not exist; using {candidates[0]}, the one tokenizer of that name"
        )
        tokenizer_path = candidates[0]
    elif not tokenizer_path.exists() and len(candidates) > 1:
        raise PrepareError(
            f"--tokenizer_path {tokenizer_path} does not exist, and several tokenizers have its name: "
            f"{', '.join(map(str, candidates))}. Pass the one to use."
        )
    if not _has_tokenizer(tokenizer_path):
        hint = f" Did you mean --tokenizer_path {candidates[0]}?" if candidates else ""
        what = "holds no tokenizer.model or tokenizer.json" if tokenizer_path.exists() else "does not exist"
        raise PrepareError(
            f"--tokenizer_path {tokenizer_path} {what}.{hint} Get one with `python "
            "scripts/download.py --repo_id meta-llama/Llama-2-7b-hf --tokenizer_only true` (writes "
            "checkpoints/meta-llama/Llama-2-7b-hf) or `python scripts/train_tokenizer.py`."
        )
    try:
        tokenizer = Tokenizer(tokenizer_path)
    except (OSError, RuntimeError, ValueError) as e:  # an unreadable tokenizer file or malformed JSON config
        raise PrepareError(f"cannot load the tokenizer in {tokenizer_path}: {e}") from None
    try:
        check_tokenizer(tokenizer, separators, "--{name} true")
    except UserError as e:
        raise PrepareError(str(e)) from None
    return tokenizer_path


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()


def _monitor(progress: multiprocessing.Queue, stats: Stats, num_files: int, verbose: bool, desc: str) -> None:
    """Collects the workers' counts into `stats` and shows them: files done, documents/s, tokens/s."""
    bar = tqdm(total=num_files, desc=desc, unit="file", disable=not verbose, dynamic_ncols=True)
    # the rates count from the first report, not from the workers' start-up, and without that report's counts: they
    # took an unknown time (a whole file), which divided by the moments since it gave 61,765,960 tok/s
    first = None  # (time, documents, tokens) at the first report
    while True:
        try:
            kind, update = progress.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if kind == "done":
            break
        stats.add(update)
        now = time.perf_counter()
        first = first or (now, stats.documents, stats.tokens)
        if (elapsed := now - first[0]) > 0.5:
            documents, tokens = stats.documents - first[1], stats.tokens - first[2]
            bar.set_postfix_str(f"{documents / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tok/s", refresh=False)
        bar.update(update.files)
    bar.close()


def _left_out(stats: Stats) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(stats.skipped.items())) or "none"


def print_summary(stats: Stats, output_dir: str) -> None:
    for record in stats.bad[:MAX_LISTED_BAD_RECORDS]:
        print(f"bad record: {record}")
    if len(stats.bad) > MAX_LISTED_BAD_RECORDS:
        print(f"... and {len(stats.bad) - MAX_LISTED_BAD_RECORDS} more bad records")
    elapsed = stats.elapsed
    skipped = _left_out(stats)
    print(
        f"{stats.files:,} files, {stats.documents:,} documents, {stats.tokens:,} tokens written to {output_dir} "
        f"in {elapsed:.1f}s ({stats.tokens / max(elapsed, 1e-9):,.0f} tokens/s); left out: {skipped}"
    )
    chunks = chunk_tokens(output_dir)
    if chunks:
        blocks = sum(n // BLOCK_SIZE for n in chunks)
        print(
            f"{len(chunks)} chunks: {blocks:,} blocks of {BLOCK_SIZE} tokens for TokensLoader(block_size={BLOCK_SIZE})"
            f" ({sum(chunks) - blocks * BLOCK_SIZE:,} tokens at chunk ends are not part of a whole block)"
        )
