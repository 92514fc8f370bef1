"""A tiny prepared dataset for tests, built with the real scripts: sample corpus, small SentencePiece tokenizer and
litdata chunks of SlimPajama train/val and Starcoder.

    from prepared_data import build_prepared_data   # tests/ is on sys.path when pytest runs
    paths = build_prepared_data(tmp_path)            # ~15 s on 2 cores
    StreamingDataset(str(paths["slimpajama_train"]), item_loader=TokensLoader(block_size=257))
"""

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.data.prepare import prepare  # noqa: E402


def load_script(name: str, folder: str = "scripts"):
    """A module of `scripts/` (or of `folder`, such as `dev/`: entry points, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_text(function) -> str:
    """The `--help` of the jsonargparse CLI built from `function` (as the scripts' `__main__` blocks build it), after
    checking that it names every parameter as a flag and describes each one with its default."""
    import inspect
    import io

    from jsonargparse import CLI

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            CLI(function, as_positional=False, args=["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
    text = out.getvalue()
    params = inspect.signature(function).parameters
    for name in params:
        assert f"--{name} " in text, name
    # a required flag (a parameter without a default) says so instead
    assert text.count("default:") + text.count("(required,") >= len(params), "a flag has no description"
    return text


def build_prepared_data(
    root: Path,
    vocab_size: int = 1024,
    max_source_files: int = 60,
    chunk_size: int = 2049 * 4,
    num_workers: int = 1,
) -> Dict[str, Path]:
    """Build everything under `root` and return the paths:

    - `raw`: `slimpajama-raw/{train,validation,test}` and `starcoderdata-raw/{python}` (sample corpus of the first
      `max_source_files` stdlib modules);
    - `tokenizer`: a `vocab_size`-token SentencePiece BPE tokenizer directory (unk=0, bos=1, eos=2);
    - `slimpajama_train`, `slimpajama_val`, `starcoder`: litdata chunks of `chunk_size` tokens at most, read with
      `StreamingDataset(str(path), item_loader=TokensLoader(block_size=...))`.
    """
    root = Path(root)
    paths = {
        "raw": root / "raw",
        "tokenizer": root / "tokenizer",
        "slimpajama_train": root / "slimpajama" / "train",
        "slimpajama_val": root / "slimpajama" / "val",
        "starcoder": root / "starcoder",
    }
    with _litdata_cache(root / "litdata-cache"), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
        load_script("prepare_sample_data").main(output_dir=paths["raw"], max_source_files=max_source_files)
        load_script("train_tokenizer").train(
            input_dir=paths["raw"], output_dir=paths["tokenizer"], vocab_size=vocab_size, num_threads=1
        )
        for kind, raw, out in [
            ("slimpajama", "slimpajama-raw/train", "slimpajama_train"),
            ("slimpajama", "slimpajama-raw/validation", "slimpajama_val"),
            ("starcoder", "starcoderdata-raw", "starcoder"),
        ]:
            prepare(kind, paths["raw"] / raw, str(paths[out]), paths["tokenizer"], chunk_size,
                    num_workers=num_workers, verbose=False)  # fmt: skip
    return paths


@contextlib.contextmanager
def _litdata_cache(folder: Path) -> Iterator[None]:
    # litdata writes its caches under the home directory unless told otherwise
    keys = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    before = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = str(folder / "cache")
    os.environ[keys[1]] = str(folder / "data")
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
