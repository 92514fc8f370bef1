"""lit_gpt/cli.py: every entry point's refusals print one line and exit 2; bugs keep their traceback."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain import COMMON, SCRIPT, _env

ROOT = Path(__file__).resolve().parents[1]


def entry_point(path: str):
    spec = importlib.util.spec_from_file_location(f"cli_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refusal(capsys, function, *args: str) -> str:
    """The one line on stderr of `cli(function)` given `args`, which must exit with code 2."""
    from lit_gpt.cli import cli

    with pytest.raises(SystemExit) as exit_info:
        cli(function, args=list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_one_refusal_of_each_kind_of_script_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    setup = entry_point("pretrain/tinyllama.py").setup
    # a flag with a prefix of a real one was taken for it (--max_step 3 trained with --max_steps 3)
    assert "unrecognized arguments: --max_step 3" in refusal(capsys, setup, "--max_step", "3")
    # the required flags are named as they are typed
    line = refusal(capsys, entry_point("finetune/lora.py").setup)
    assert "the following flags are required: --checkpoint_dir, --data; `--help` lists every flag" in line
    # several files after one flag, as a shell user writes them: the list syntax is named
    line = refusal(
        capsys, entry_point("finetune/lora.py").setup, "--checkpoint_dir", missing, "--data", "a.json", "b.json"
    )
    assert (
        "unrecognized arguments: b.json (each value follows its flag; several values of one flag are one list" in line
    )
    assert "--max_steps 'abc' is not int or null" in refusal(capsys, setup, "--max_steps", "abc")
    message = "--precision 'fp8' is not one of 'bf16-mixed', 'bf16-true', '32-true'"
    assert message in refusal(capsys, setup, "--precision", "fp8")
    assert "--data_dir" in refusal(capsys, setup, "--model_name", "micro-llama", "--data_dir", missing)
    main = entry_point("generate/base.py").main
    assert "lit_model.pth' does not exist" in refusal(capsys, main, "--checkpoint_dir", missing)
    main = entry_point("eval/perplexity.py").main
    assert "does not exist; prepare it with `python scripts/prepare_text.py" in refusal(
        capsys, main, "--checkpoint_dir", missing, "--data_dir", missing
    )
    convert = entry_point("scripts/convert_lit_checkpoint.py").convert
    assert "does not exist" in refusal(capsys, convert, "--checkpoint_dir", missing, "--output_dir", missing + "2")
    main = entry_point("scripts/prepare_slimpajama.py").main
    assert "--tokenizer_path" in refusal(capsys, main, "--tokenizer_path", missing, "--output_dir", str(tmp_path / "o"))
    # the --out_dir of a training run given where its lit checkpoint belongs: how to make one, LoRA's merge included
    (tmp_path / "lora-out").mkdir()
    (tmp_path / "lora-out" / "step-00000004.pth").touch()
    main = entry_point("generate/base.py").main
    line = refusal(capsys, main, "--checkpoint_dir", str(tmp_path / "lora-out"))
    assert "lora-out' is the output folder of a training run (step-*.pth checkpoints)" in line
    assert "`python scripts/merge_lora.py`" in line
    # a --lora_checkpoint that does not exist is named as missing
    base = tmp_path / "base"
    base.mkdir()
    (base / "lit_model.pth").touch()
    (base / "lit_config.json").write_text('{"name": "micro-llama"}')
    merge = entry_point("scripts/merge_lora.py").merge
    line = refusal(capsys, merge, "--checkpoint_dir", str(base), "--lora_checkpoint", missing)
    assert f"--lora_checkpoint {missing} does not exist: pass the --out_dir of finetune/lora.py" in line
    # an unset variable: `--access_token $HF_TOKEN --tokenizer_only true` reaches the script without the value
    download = entry_point("scripts/download.py").download_from_hub
    line = refusal(capsys, download, "--repo_id", "a/b", "--access_token", "--tokenizer_only", "true")
    assert "--access_token was given no value; if the value was a shell variable such as $HF_TOKEN" in line


def test_a_bug_keeps_its_traceback():
    from lit_gpt.cli import cli

    def main(value: str = "x") -> None:
        """Args:
        value: a number, badly parsed
        """
        int(value)  # a ValueError from a built-in, not a refusal of the project's

    with pytest.raises(ValueError, match="invalid literal"):
        cli(main, args=[])


def test_plotting_refusal_through_the_script(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_logs.py"), "--log_dir", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_refusal_after_two_processes_started_prints_once(tmp_path):
    from test_pretrain import _build, same_tokens

    data = _build(tmp_path / "data", same_tokens, 8)
    missing = tmp_path / "elsewhere" / "step-00000004.pth"  # checked by both processes, once Fabric has started
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path / "out")]
    cmd += ["--devices", "2", "--max_steps", "1", "--resume", str(missing)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr and "[rank0]" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: No checkpoint at {missing}"), proc.stderr


def _docstring_cli_scripts():
    from test_tutorials import ENTRY_POINTS

    return [str(p.relative_to(ROOT)) for p in ENTRY_POINTS if "cli(" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("script", _docstring_cli_scripts())
def test_help_cuts_no_sentence(script):
    """`--help` opens with the entry function's docstring summary, which jsonargparse takes from docstring_parser: its
    first line only. A summary over two lines was cut (train_tokenizer.py's ended "... under `input_dir`, or on the"):
    the summary is the docstring's whole first paragraph, and it and every flag's help end a sentence."""
    import ast

    from test_tutorials import _parser

    parser = _parser(script)
    source = (ROOT / script).read_text(encoding="utf-8")
    name = re.search(r"\bcli\((\w+)", source)[1]
    function = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name)
    summary = " ".join(ast.get_docstring(function).split("\n\n")[0].split())
    assert parser.description == summary
    ends = (".", ")", "]")
    assert summary.endswith(ends), summary
    for action in parser._actions:
        if action.help and action.dest not in ("help", "config", "print_config"):
            assert action.help.rstrip().endswith(ends), f"{action.option_strings}: {action.help!r}"
