"""lit_gpt/cli.py: every entry point's refusals print one line and exit 2; bugs keep their traceback."""

import ast
import importlib.util
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest
from test_pretrain import COMMON, SCRIPT, _env

from lit_gpt.cli import UserError, check_values_given

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


class Writes(io.RawIOBase):
    """A file descriptor, as `python -u` writes to it: what each write call gave."""

    def __init__(self) -> None:
        self.calls: List[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.calls.append(bytes(data))
        return len(data)


def test_every_line_of_an_entry_point_is_written_in_one_piece(monkeypatch):
    """The processes of a run share one output: unbuffered (PYTHONUNBUFFERED), `print` wrote a line's text and its
    newline in two writes, and another process's line could land between them (two ranks' lines joined in one, as the
    two-process test of background saves saw). Every line of an entry point is one write."""
    from lit_gpt.cli import cli

    out, err = Writes(), Writes()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8", write_through=True))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err, encoding="utf-8", write_through=True))

    def main(ranks: str = "01") -> None:
        """Args:
        ranks: the ranks named
        """
        for i in map(int, ranks):
            print(f"step {i}", flush=True)
            print(f"Checkpoint save paused at writing on rank {i}", file=sys.stderr, flush=True)
        print("a", "b", sep=" | ", end="\n", file=sys.stderr)

    cli(main, args=["--ranks", "0123"])
    sys.stderr.flush()
    assert out.calls == [f"step {i}\n".encode() for i in range(4)]
    assert err.calls == [f"Checkpoint save paused at writing on rank {i}\n".encode() for i in range(4)] + [b"a | b\n"]


def test_plotting_refusal_through_the_script(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_logs.py"), "--log_dir", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_refusal_after_two_processes_started_prints_once(tmp_path):
    from test_pretrain import _build, same_tokens

    data = _build(tmp_path / "data", same_tokens, 8)
    cut_short = tmp_path / "elsewhere" / "step-00000004.pth"  # read by both processes, once Fabric has started
    cut_short.parent.mkdir()
    cut_short.write_bytes(b"PK\x03\x04")
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path / "out")]
    cmd += ["--devices", "2", "--max_steps", "1", "--resume", str(cut_short)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr and "[rank0]" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {cut_short} cannot be read"), proc.stderr


def test_a_resume_path_that_does_not_exist_is_refused_before_anything_is_printed_or_written(tmp_path, capsys):
    """It was refused once Fabric had started: after the settings, the notes and the model's size were printed and
    the out dir (its lock and logs) was made."""
    from test_pretrain import _build, same_tokens

    from lit_gpt.cli import cli

    data = _build(tmp_path / "data", same_tokens, 8)
    missing = tmp_path / "elsewhere" / "step-00000004.pth"
    args = [*COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--max_steps", "1"]
    # through the script's own `cli(setup)` in-process (its __main__ block is that call; a Python start with
    # lightning costs several seconds here)
    setup = entry_point("pretrain/tinyllama.py").setup
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(setup, args=[*args, "--resume", str(missing)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == "", out[-3000:] + err[-3000:]
    assert err.splitlines() == [
        f"error: No checkpoint at {missing}; pass `--resume auto` to pick the latest in --out_dir"
    ]
    assert not (tmp_path / "out").exists()


########################
# The first, light pass (`check_command_line` at the top of every entry point): before torch is imported
########################
# every script whose command line is `cli(function)`
ENTRY_POINTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("scripts", "pretrain", "finetune", "generate", "eval", "dev")
    for path in (ROOT / folder).glob("*.py")
    if re.search(r"^\s+cli\(\w+\)", path.read_text(encoding="utf-8"), re.M)
)
HEAVY = ("torch", "lightning", "lightning_fabric", "litdata", "transformers", "torchmetrics", "scipy")
# runs `script args...` as `python script args...` would, with the modules named in argv[1] made uninstalled (as
# `import` and importlib.util.find_spec see them), and prints on stdout which of HEAVY it imported
RUN_SCRIPT = f"""
import runpy, sys
for name in filter(None, sys.argv[1].split(",")):
    sys.modules[name] = None
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("imported:", ",".join(name for name in {HEAVY!r} if sys.modules.get(name) is not None))
"""


def run_script(script: str, *args: str, hide: str = "", python=(sys.executable,)) -> subprocess.CompletedProcess:
    cmd = [*python, "-c", RUN_SCRIPT, hide, str(ROOT / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-3000:]
    return proc.stderr


def entry_function(script: str) -> str:
    return re.search(r"^\s+cli\((\w+)\)", (ROOT / script).read_text(encoding="utf-8"), re.M)[1]


def entry_parameters(script: str) -> List[str]:
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_function(script))
    return [arg.arg for arg in function.args.args]


def test_entry_points_are_found():
    assert {"pretrain/tinyllama.py", "finetune/lora.py", "finetune/full.py", "generate/base.py"} <= set(ENTRY_POINTS)
    assert {"eval/perplexity.py", "scripts/convert_lit_checkpoint.py", "scripts/prepare_text.py"} <= set(ENTRY_POINTS)
    assert len(ENTRY_POINTS) >= 19


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_a_misspelt_flag_is_refused_before_torch_is_imported(script):
    """Importing torch, lightning and litdata took 25-40 s on a busy 2-core machine before the flags were read."""
    name = entry_parameters(script)[0]
    misspelt = f"--{name[0]}{name[2]}{name[1]}{name[3:]}"  # two letters swapped: --mdoel_name
    proc = run_script(script, misspelt, "x")
    line = one_error_line(proc)
    assert line.startswith(f"error: unrecognized arguments: {misspelt} x (did you mean --{name}?)"), line
    assert proc.stdout.strip() == "imported:", proc.stdout


def test_near_misses_name_the_flag_in_the_light_pass_and_in_the_full_parse(capsys):
    proc = run_script("pretrain/tinyllama.py", "--modle_name", "micro-llama")
    assert "--modle_name micro-llama (did you mean --model_name?); `--help` lists every flag" in one_error_line(proc)
    line = one_error_line(run_script("pretrain/tinyllama.py", "--model-name", "micro-llama", "--max_steps", "3"))
    assert "(did you mean --model_name?)" in line
    line = one_error_line(run_script("finetune/lora.py", "--lora-r", "4", "--lora_alph", "8"))
    assert "(did you mean --lora_r for --lora-r and --lora_alpha for --lora_alph?)" in line
    # the full parse (after the imports) says the same of the real function
    setup = entry_point("finetune/lora.py").setup
    assert "--lora-r 4 (did you mean --lora_r?)" in refusal(capsys, setup, "--checkpoint_dir", "c", "--lora-r", "4")
    setup = entry_point("pretrain/tinyllama.py").setup
    assert "--modle_name x (did you mean --model_name?)" in refusal(capsys, setup, "--modle_name", "x")


def test_bad_values_and_missing_flags_are_refused_before_torch_is_imported_as_the_full_parse_does(capsys):
    setup = entry_point("pretrain/tinyllama.py").setup
    for args in (["--max_steps", "abc"], ["--precision", "fp8"], ["--max_steps"]):
        proc = run_script("pretrain/tinyllama.py", *args)
        assert one_error_line(proc) == refusal(capsys, setup, *args)
        assert proc.stdout.strip() == "imported:", proc.stdout
    proc = run_script("finetune/lora.py", "--data", "a.json")
    assert "the following flags are required: --checkpoint_dir" in one_error_line(proc)
    assert proc.stdout.strip() == "imported:", proc.stdout


def test_a_training_script_imports_fabric_without_lightning_pytorch_and_torchmetrics():
    """`import lightning` brought lightning.pytorch and torchmetrics, and with them transformers and scipy: ~2.5 s of
    CPU in every process that trains (each rank, each stage). The script imports Fabric alone
    (lit_gpt/training/fabric.py)."""
    proc = run_script("pretrain/tinyllama.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "imported: torch,lightning_fabric", proc.stdout[-500:]


def test_fabric_hides_torchmetrics_only_while_it_imports():
    """Fabric's version check is told that torchmetrics is absent; afterwards torchmetrics imports as usual."""
    code = "import sys, lit_gpt.training.fabric; assert 'torchmetrics' not in sys.modules; import torchmetrics"
    code += "; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout.strip() == "ok", proc.stderr


CSV_LOGGER_SCRIPT = """
import sys
from pathlib import Path
from lit_gpt.training.logger import choose_logger

logger = choose_logger("csv", Path(sys.argv[1]), "run")
logger.log_hyperparams({"learning_rate": 0.003, "model_name": "micro-llama"})
logger.log_metrics({"loss": 2.5}, step=1)
logger.finalize("success")
print("imported:", ",".join(m for m in ("lightning", "pytorch_lightning", "torchmetrics") if m in sys.modules))
"""


def test_the_csv_logger_writes_metrics_and_hparams_without_importing_lightning_pytorch(tmp_path):
    """Lightning's CSVLogger wrote `hparams.yaml` beside `metrics.csv`, but importing it brought lightning.pytorch and
    torchmetrics into every run with `--logger_name csv` (all of the suite's training runs)."""
    import csv

    import yaml

    proc = subprocess.run(
        [sys.executable, "-c", CSV_LOGGER_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "imported: ", proc.stdout
    version = tmp_path / "logs" / "csv" / "version_0"
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams == {"learning_rate": 0.003, "model_name": "micro-llama"}
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    assert [(float(r["loss"]), int(r["step"])) for r in rows] == [(2.5, 1)]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_the_light_pass_takes_every_value_that_the_full_parse_takes(script):
    """The light pass's stand-in for the entry function has the same flags, and each parameter's type and default is
    the real one's or takes any value: it never refuses what `cli(main)` would accept."""
    from jsonargparse import capture_parser

    from lit_gpt.cli import cli, entry_stand_in

    real = getattr(entry_point(script), entry_function(script))
    stand_in = entry_stand_in(ast.parse((ROOT / script).read_text(encoding="utf-8")))

    def flags(function):
        parser = capture_parser(lambda: cli(function, args=[]))
        return sorted(option for action in parser._actions for option in action.option_strings)

    assert flags(stand_in) == flags(real)
    for name, parameter in inspect.signature(stand_in).parameters.items():
        expected = inspect.signature(real).parameters[name]
        if parameter.annotation is not Any:
            assert (parameter.annotation, parameter.default) == (expected.annotation, expected.default), name
        assert (parameter.default is inspect.Parameter.empty) == (expected.default is inspect.Parameter.empty), name


def test_the_light_pass_takes_every_documented_command(capsys):
    """Every command of the README, the tutorials and the entry points' docstrings (which tests/test_tutorials.py
    parses with the full parser) passes the light pass too."""
    from test_tutorials import all_calls

    from lit_gpt.cli import cli, entry_stand_in

    calls = [call.values for call in all_calls() if call.values[0] in ENTRY_POINTS]
    assert len(calls) >= 20
    for script, args in calls:
        stand_in = entry_stand_in(ast.parse((ROOT / script).read_text(encoding="utf-8")))
        try:
            cli(stand_in, args=args)
        except SystemExit:
            pytest.fail(f"`{script} {' '.join(args)}` is refused by the light pass: {capsys.readouterr().err}")


def test_help_is_the_full_parsers():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Stop earlier, after this many optimizer steps" in proc.stdout  # --max_steps' docstring
    for name in entry_parameters("pretrain/tinyllama.py"):
        assert f"--{name} " in proc.stdout, name


########################
# A Python without the project's packages: what to activate or install, in one line
########################
@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_outside_the_environment_the_line_says_what_to_activate(script):
    # -S: no site-packages, as a Python outside .venv; -I: nor the user's or PYTHONPATH's
    proc = subprocess.run([sys.executable, "-I", "-S", str(ROOT / script)], capture_output=True, text=True, timeout=60)
    line = one_error_line(proc)
    assert "jsonargparse" in line and f"not installed in this Python ({sys.executable})" in line, line
    assert "`source " in line or "`make install`" in line, line


def test_a_missing_optional_package_is_named_with_its_install_command(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text("step,loss\n1,5.0\n2,4.0\n")
    proc = run_script("scripts/plot_logs.py", "--log_dir", str(tmp_path / "logs"), hide="matplotlib")
    line = one_error_line(proc)
    assert "error: matplotlib is not installed in this Python" in line and "`pip install matplotlib`" in line, line


def test_logger_wandb_without_wandb_is_refused_with_its_install_command(tmp_path):
    from test_pretrain import _build, same_tokens

    data = _build(tmp_path / "data", same_tokens, 8)
    args = [*COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--max_steps", "4"]
    proc = run_script("pretrain/tinyllama.py", *args, "--logger_name", "wandb", hide="wandb")
    line = one_error_line(proc)
    assert "error: --logger_name wandb needs wandb, which this Python lacks: `pip install wandb`" in line, line


def _docstring_cli_scripts():
    from test_tutorials import ENTRY_POINTS

    return [str(p.relative_to(ROOT)) for p in ENTRY_POINTS if "cli(" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("script", _docstring_cli_scripts())
def test_help_cuts_no_sentence(script):
    """`--help` opens with the entry function's docstring summary, which jsonargparse takes from docstring_parser: its
    first line only. A summary over two lines was cut (train_tokenizer.py's ended "... under `input_dir`, or on the"):
    the summary is the docstring's whole first paragraph, and it and every flag's help end a sentence."""
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


def test_a_value_with_a_space_may_start_with_dashes_and_one_without_is_told_how():
    """`--prompt "-- Chapter one --"` was refused as a flag given no value (argparse itself takes an argument with a
    space as a value); a value that starts with -- and has no space is written --flag=value, and the error says so."""
    check_values_given(["--prompt", "-- Chapter one --", "--max_new_tokens", "3"])
    with pytest.raises(UserError, match=r"\(a value that starts with -- is written --out_dir=--verbose\)$"):
        check_values_given(["--out_dir", "--verbose"])


@pytest.mark.parametrize(
    "flag, value, expected",
    [("--trust_pickle", "1", "true or false"), ("--compile", "maybe", "true or false or null"),
     ("--data_weights", "0.5", "a list")],
)  # fmt: skip
def test_type_refusals_name_the_type_in_words(flag, value, expected):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), flag, value], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {flag} {value!r} is not {expected} (`--help` describes the flag)"
    ], proc.stderr


def hostile_values(name: str, annotation: Any) -> List[str]:
    """Values that `--name` (typed `annotation`) must refuse: negative, zero where the flag's least is 1, beyond what
    torch and numpy take, NaN and infinity for floats, above 1 for fractions; in a list or mapping for those types."""
    from lit_gpt.cli import FLAG_RANGES, INT64_MAX

    text = str(annotation)
    least, greatest, below = FLAG_RANGES[name]
    if "float" in text:
        values = ["-1.5", ".nan", ".inf", "-.inf"] + (["1.0"] if below else [])
    else:
        values = ["-1", str(INT64_MAX + 1)] + (["0"] if least == 1 else []) + ([str(greatest + 1)] if greatest else [])
    if "Dict" in text:
        return [f"{{a: {v}}}" for v in values]
    if "List" in text or "Tuple" in text:
        return [f"[{v}, {v}]" for v in values]
    return values


def test_every_numeric_and_path_flag_of_every_entry_point_refuses_hostile_values(tmp_path, capsys):
    """Issue 28: `--block_size -5`, `--seed 99999999999`, eval's `--block_size -1` (ZeroDivisionError), plot_logs'
    `--output run/step-8.pth` ended in tracebacks, `--block_size 0` became 256 silently. Each int, float and path flag
    of each entry point's signature is given hostile values; each is refused in one line that names the flag, before
    the entry function runs (the full parse, in this process) and before torch is imported (a few runs of the scripts
    themselves: the light pass)."""
    from lit_gpt.cli import check_flag_values, is_path_flag

    checkpoint = tmp_path / "run" / "step-00000008.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK")
    output_files = {"output": [str(checkpoint), str(tmp_path)], "out_file": [str(checkpoint), str(tmp_path)]}
    refused = 0
    for script in ENTRY_POINTS:
        function = getattr(entry_point(script), entry_function(script))
        parameters = inspect.signature(function).parameters
        # every default passes (and every numeric flag has its range: a flag without one is refused)
        check_flag_values({n: p.default for n, p in parameters.items() if p.default is not inspect.Parameter.empty})
        required = {n: str(tmp_path / "missing") for n, p in parameters.items() if p.default is inspect.Parameter.empty}
        for name, parameter in parameters.items():
            text = str(parameter.annotation)
            values = []
            if re.search(r"\b(int|float)\b", text):
                values += hostile_values(name, parameter.annotation)
            if is_path_flag(name, parameter.annotation):
                values += ["", " "] + output_files.get(name, [])
            for value in values:
                args = [f"--{n}={v}" for n, v in {**required, name: value}.items()]
                line = refusal(capsys, function, *args)
                assert line.startswith(f"error: --{name} "), (script, name, value, line)
                refused += 1
    assert refused > 300
    # what the full parse passes and the entry function replaced silently: refused there too
    from lit_gpt.data.prepare import prepare
    from lit_gpt.data.readers import PrepareError

    with pytest.raises(PrepareError, match="--num_workers 0 must be at least 1; leave it out for one per CPU core"):
        prepare("text", tmp_path, str(tmp_path / "out"), tmp_path / "missing", 8192, num_workers=0)
    # the scripts themselves: refused by the light pass, before torch is imported
    for script, args, expected in [
        ("pretrain/tinyllama.py", ["--seed", "99999999999"], "--seed 99999999999 must be at most 4_294_967_295"),
        ("pretrain/tinyllama.py", ["--block_size", "0"], "--block_size 0 must be at least 1"),
        ("eval/perplexity.py", ["--checkpoint_dir", "c", "--block_size", "-1"], "--block_size -1 must be at least 1"),
        ("generate/base.py", ["--checkpoint_dir", "c", "--seed", "-1"], "--seed -1 must not be negative"),
        ("scripts/train_tokenizer.py", ["--max_lines", "-1"], "--max_lines -1 must be at least 1"),
        ("scripts/prepare_text.py", ["--input", "i", "--output_dir", "o", "--num_workers", "-1"], "--num_workers -1"),
        ("scripts/plot_logs.py", ["--output", str(checkpoint)], f"--output '{checkpoint}' is a checkpoint's"),
    ]:
        proc = run_script(script, *args)
        assert one_error_line(proc).startswith(f"error: {expected}"), proc.stderr
        assert proc.stdout.strip() == "imported:", proc.stdout


def test_output_formats_are_each_scripts_own(tmp_path):
    """`--output` named plot_logs' image formats for every script: dev/device/instruction_data.py's `--output
    .device/inst.json.xz` was refused as "not a format it writes". Each flag refuses a folder or a weights' name
    everywhere; the formats are the writing script's (plot_logs: images)."""
    from lit_gpt.cli import UserError, check_flag_values

    check_flag_values({"output": str(tmp_path / "inst.json.xz")})
    with pytest.raises(UserError, match="is a checkpoint's or weights' name"):
        check_flag_values({"output": str(tmp_path / "step-8.pth")})
    with pytest.raises(UserError, match="is a folder"):
        check_flag_values({"out_file": str(tmp_path)})
    proc = run_script("scripts/plot_logs.py", "--log_dir", str(tmp_path), "--output", str(tmp_path / "loss.txt"))
    assert one_error_line(proc).startswith(f"error: --output '{tmp_path / 'loss.txt'}' is not a format it writes")
