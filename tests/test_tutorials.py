"""The tutorials cannot drift from the code.

- Every `python <script>.py --flags` command in a ```bash block of `tutorials/*.md` and `README.md` (also under
  `torchrun`/`srun`), and in the module docstring of every entry point, names a script that exists and parses with
  that script's own command line parser: every flag exists and every value has the flag's type (`Literal` choices
  included).
- Blocks marked `<!-- test: run -->` on the line before them are run, command after command, by
  `tests/test_demo.py` (`run_marked_blocks` below): the pages of `AFTER_DEMO` in a folder that holds only `out/demo`,
  the smoke demo's output (the repository root after `make demo`), the others in a folder that holds the sample data
  the smoke demo prepared with the real scripts (`data/slimpajama/{train,val,test}`, `data/starcoder`,
  `checkpoints/sample-tokenizer`, as the sample-data section of `pretrain_tinyllama.md` leaves them) and the users'
  own files the pages start from (`my-corpus`).
"""

import ast
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "tutorials").glob("*.md")) + [ROOT / "README.md"]
SEED = Path(__file__).with_name("seed_tutorial_commands.md")  # the commands of the tutorial users know, verbatim
RUN_MARKER = "<!-- test: run -->"
ENTRY_POINTS = sorted(
    p for d in ("scripts", "pretrain", "finetune", "generate", "eval", "dev") for p in (ROOT / d).glob("*.py")
)
# pages whose runnable blocks start where `make demo` ends: from its outputs under out/demo
AFTER_DEMO = ("finetune_lora.md",)
LAUNCHERS = {"python", "python3", "torchrun", "srun", "fabric"}


def bash_blocks(path: Path) -> List[Tuple[int, bool, str]]:
    """(line number, marked runnable, text) of every ```bash block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            marked = i > 0 and lines[i - 1].strip() == RUN_MARKER
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            blocks.append((start + 1, marked, "\n".join(lines[start + 1 : i])))
        i += 1
    return blocks


def commands(block: str) -> List[List[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, `&&` and `;` split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        command: List[str] = []
        for token in shlex.split(line, comments=True) + [";"]:
            if token in ("&&", ";", "||", "|"):
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


def script_call(tokens: List[str]):
    """(script, args) when the command runs a Python script of the repository, else None."""
    if not tokens or tokens[0] not in LAUNCHERS:
        return None
    for i, token in enumerate(tokens):
        if token.endswith(".py"):
            args = tokens[i + 1 :]
            return token, args[1:] if args[:1] == ["--"] else args  # `fabric run script.py -- --flags`
    return None


def docstring_examples(script: Path) -> str:
    """The `python ...` example lines of an entry point's module docstring, as a bash block."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    lines, keep = [], False
    for line in doc.splitlines():
        line = line.strip()
        keep = line.startswith("python ") or (keep and bool(lines) and lines[-1].endswith("\\"))
        if keep:
            lines.append(line)
    return "\n".join(lines)


def all_calls():
    for doc in [*DOCS, SEED]:
        for line, _, block in bash_blocks(doc):
            for tokens in commands(block):
                if (call := script_call(tokens)) is not None:
                    yield pytest.param(*call, id=f"{doc.name}:{line}:{call[0]}")
    # the example in each entry point's docstring (what --help shows first) is a command a user copies too
    for script in ENTRY_POINTS:
        for tokens in commands(docstring_examples(script)):
            if (call := script_call(tokens)) is not None:
                yield pytest.param(*call, id=f"{script.relative_to(ROOT)}:docstring:{call[0]}")


def _parser(script: str):
    """The jsonargparse parser of `script`'s `cli(<function>)` call (lit_gpt/cli.py), or its argparse
    `build_parser()`, built in-process without running it."""
    from jsonargparse import capture_parser

    from lit_gpt.cli import cli

    path = ROOT / script
    target = re.search(r"\bcli\((\w+)", path.read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if target is None:  # argparse, in a script that runs before jsonargparse is installed (scripts/torch_source.py)
        return module.build_parser()
    return capture_parser(lambda: cli(getattr(module, target.group(1)), args=[]))


def test_tutorials_have_commands():
    calls = list(all_calls())
    assert len(calls) >= 20
    scripts = {c.values[0] for c in calls}
    assert {
        "pretrain/tinyllama.py",
        "scripts/prepare_slimpajama.py",
        "generate/base.py",
        "eval/perplexity.py",
    } <= scripts
    assert any(marked for doc in DOCS for _, marked, _ in bash_blocks(doc)), f"no block is marked {RUN_MARKER}"
    seed = [c for c in calls if c.id.startswith(SEED.name)]
    assert len(seed) == 10 and {c.values[0] for c in seed} == {
        "scripts/download.py",
        "scripts/prepare_starcoder.py",
        "scripts/prepare_slimpajama.py",
        "pretrain/tinyllama.py",
        "scripts/convert_pretrained_checkpoint.py",
    }


def assert_parses(script: str, args: List[str]):
    """`args` parsed by `script`'s own command-line parser (the namespace), or a test failure with its error."""
    assert (ROOT / script).is_file(), f"{script} does not exist"
    parser = _parser(script)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"`{script} {shlex.join(args)}` does not parse: {stderr.getvalue().strip()[-1500:]} ({e})")


@pytest.mark.parametrize(("script", "args"), list(all_calls()))
def test_command_parses(script, args):
    assert_parses(script, args)


def run_marked_blocks(work: Path, docs: Sequence[Path]) -> int:
    """Run the commands of every block of `docs` marked `<!-- test: run -->` in `work`, as a user copies them: a
    script of the repository or `python -c`, with this Python; returns how many ran. `tests/test_demo.py` calls this
    in folders that hold what the smoke demo built."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ran = 0
    for doc in docs:
        for line, marked, block in bash_blocks(doc):
            if not marked:
                continue
            for tokens in commands(block):
                call = script_call(tokens)
                runnable = tokens[0] == "python" and (call is not None or tokens[1:2] == ["-c"])
                assert runnable, f"{doc.name}:{line}: run only `python` commands"
                cmd = [sys.executable, *tokens[1:]] if call is None else [sys.executable, str(ROOT / call[0]), *call[1]]
                proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, f"{doc.name}:{line}: {shlex.join(tokens)}\n{proc.stderr[-3000:]}"
                ran += 1
    return ran


def test_sample_data_section_prepares_what_its_commands_read():
    """The sample-data section of pretrain_tinyllama.md prepares every folder its later commands read, the test split
    that eval/perplexity.py measures included."""
    text = (ROOT / "tutorials" / "pretrain_tinyllama.md").read_text(encoding="utf-8")
    section = text.split("## Try the whole pipeline on the sample data first")[1].split("\n## ")[0]
    written, perplexity_data = set(), None
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for tokens in commands(block):
            script, args = script_call(tokens)
            flags = dict(zip(args[::2], args[1::2]))
            if "--data_dir" in flags:
                data = flags["--data_dir"]
                reads = [f"{data}/slimpajama/train", f"{data}/slimpajama/val", f"{data}/starcoder"]
                reads = reads if script == "pretrain/tinyllama.py" else [data]
                assert set(reads) <= written, f"{script} reads {sorted(set(reads) - written)}, not prepared before"
                perplexity_data = data if script == "eval/perplexity.py" else perplexity_data
            written.add(flags.get("--output_dir"))
    assert perplexity_data == "data/slimpajama/test"
