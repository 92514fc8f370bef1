"""Build a small real corpus from the Python installation, in the on-disk layouts of SlimPajama and Starcoder.

Prose comes from the standard library's docstrings and the documentation topics that ship with Python (`pydoc_data`);
code from the standard library's own `.py` files and C headers. The result is deterministic: the same Python
installation gives the same bytes.

    data/slimpajama-raw/{train,validation,test}/chunk1/example_{split}_{i}.jsonl.zst
        lines {"text": ..., "meta": {"redpajama_set_name": ...}}, some of them RedPajamaGithub rows (source code)
    data/starcoderdata-raw/{python,c}/train-0000i-of-0000n.parquet
        columns max_stars_repo_path, max_stars_repo_name, max_stars_count, id, content

Example:

    python scripts/prepare_sample_data.py --output_dir data
"""

import ast
import io
import json
import shutil
import sys
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import UserError, check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard as zstd  # noqa: E402

PROSE_SETS = [
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaWikipedia",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaStackExchange",
]
FILES_PER_SPLIT = {"train": 8, "validation": 2, "test": 2}
PYTHON_PARQUET_FILES = 4


def main(
    output_dir: Path = Path("data"),
    source_dir: Optional[Path] = None,
    max_source_files: Optional[int] = None,
    overwrite: bool = False,
) -> None:
    """Write `slimpajama-raw/` and `starcoderdata-raw/` under `output_dir`.

    Args:
        output_dir: Where the two raw dataset folders go.
        source_dir: The Python standard library to read (default: this interpreter's).
        max_source_files: Read only the first N `.py` files (sorted by path), for a smaller corpus.
        overwrite: Delete existing `slimpajama-raw/` and `starcoderdata-raw/` folders under `output_dir` first.
    """
    t0 = time.perf_counter()
    source_dir = Path(source_dir or sysconfig.get_paths()["stdlib"])
    targets = [output_dir / "slimpajama-raw", output_dir / "starcoderdata-raw"]
    for target in targets:
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise UserError(
                    f"{target} is not empty. Pass --overwrite true to replace it (everything in it is deleted),"
                    " or pick another --output_dir."
                )
            shutil.rmtree(target)

    sources = python_sources(source_dir, max_source_files)
    if not sources:
        raise UserError(f"no readable .py files under {source_dir}; pass --source_dir a Python stdlib folder")
    rows = slimpajama_rows(sources, include_topics=max_source_files is None)
    written = write_slimpajama(rows, targets[0])
    headers = c_headers(Path(sysconfig.get_paths()["include"])) if max_source_files is None else {}
    written += write_starcoder({"python": sources, "c": headers}, targets[1])

    docs = {split: len(r) for split, r in rows.items()}
    github = sum(row["meta"]["redpajama_set_name"] == "RedPajamaGithub" for r in rows.values() for row in r)
    size = sum(p.stat().st_size for p in written)
    print(f"SlimPajama layout: {docs} documents ({github} RedPajamaGithub rows) in {targets[0]}")
    print(f"Starcoder layout: {len(sources)} python and {len(headers)} c files in {targets[1]}")
    print(f"{len(written)} files, {size / 1e6:.1f} MB, built in {time.perf_counter() - t0:.1f}s")


def python_sources(source_dir: Path, max_files: Optional[int]) -> Dict[str, str]:
    """Relative path -> source of the library's `.py` files, test suites and third-party packages left out."""
    sources = {}
    for path in sorted(source_dir.rglob("*.py")):
        rel = path.relative_to(source_dir).as_posix()
        parts = set(rel.split("/")[:-1])
        if parts & {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__"}:
            continue
        try:
            sources[rel] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if max_files is not None and len(sources) >= max_files:
            break
    return sources


def c_headers(include_dir: Path) -> Dict[str, str]:
    headers = {}
    for path in sorted(include_dir.rglob("*.h")):
        try:
            headers[path.relative_to(include_dir).as_posix()] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return headers


def slimpajama_rows(sources: Dict[str, str], include_topics: bool) -> Dict[str, List[dict]]:
    """Documents split by source file (so that one module never lands in two splits)."""
    rows: Dict[str, List[dict]] = {split: [] for split in FILES_PER_SPLIT}
    for rel, source in sources.items():
        split = _split_of(rel)
        for text in docstring_documents(rel, source):
            rows[split].append(_row(text, PROSE_SETS[zlib.crc32(text.encode()) % len(PROSE_SETS)]))
        if zlib.crc32(rel.encode()) % 8 == 0:
            # code rows as in the real data, which the SlimPajama preparation skips (Starcoder covers code)
            rows[split].append(_row(source, "RedPajamaGithub"))
    if include_topics:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            rows[_split_of(name)].append(_row(topics[name], "RedPajamaBook"))
    return rows


def docstring_documents(rel: str, source: str) -> List[str]:
    """One document for the module docstring, one per top-level class or function with its methods' docstrings."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    module = rel[:-3].replace("/", ".").removesuffix(".__init__")
    docs = []
    if (doc := ast.get_docstring(tree)) and len(doc) >= 80:
        docs.append(f"{module}\n\n{doc}")
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        parts = [f"{module}.{node.name}\n\n{ast.get_docstring(node)}"] if ast.get_docstring(node) else []
        for child in node.body if isinstance(node, ast.ClassDef) else []:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and (doc := ast.get_docstring(child)):
                parts.append(f"{node.name}.{child.name}: {doc}")
        text = "\n\n".join(parts)
        if len(text) >= 80:
            docs.append(text)
    return docs


def write_slimpajama(rows: Dict[str, List[dict]], root: Path) -> List[Path]:
    written = []
    cctx = zstd.ZstdCompressor(level=10)  # single-threaded: the same bytes on every run
    for split, split_rows in rows.items():
        n = FILES_PER_SPLIT[split]
        folder = root / split / "chunk1"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows[i::n]]
            path = folder / f"example_{split}_{i}.jsonl.zst"
            path.write_bytes(cctx.compress("".join(lines).encode("utf-8")))
            written.append(path)
    return written


def write_starcoder(languages: Dict[str, Dict[str, str]], root: Path) -> List[Path]:
    written = []
    for language, files in languages.items():
        if not files:
            continue
        paths = list(files)
        n = PYTHON_PARQUET_FILES if language == "python" else 1
        folder = root / language
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            part = paths[i::n]
            table = pa.table(
                {
                    "max_stars_repo_path": pa.array([f"Lib/{p}" if language == "python" else p for p in part]),
                    "max_stars_repo_name": pa.array(["python/cpython"] * len(part)),
                    "max_stars_count": pa.array([zlib.crc32(p.encode()) % 5000 for p in part], pa.int64()),
                    "id": pa.array([f"{language}-{zlib.crc32(p.encode()):08x}" for p in part]),
                    "content": pa.array([files[p] for p in part]),
                }
            )
            path = folder / f"train-{i:05d}-of-{n:05d}.parquet"
            buffer = io.BytesIO()
            pq.write_table(table, buffer, row_group_size=64, compression="zstd")
            path.write_bytes(buffer.getvalue())
            written.append(path)
    return written


def _split_of(key: str) -> str:
    bucket = zlib.crc32(key.encode()) % 20
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def _row(text: str, set_name: str) -> dict:
    return {"text": text, "meta": {"redpajama_set_name": set_name}}


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
