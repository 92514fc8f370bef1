"""The command line of every entry point: `check_command_line(__name__, __file__)` before its heavy imports, and
`cli(main)` in its `__main__` block.

The flags are `main`'s parameters, parsed by jsonargparse with whole names only (`--max_step 3` is refused, not taken
for `--max_steps`). A refusal of what the user asked (a bad flag value, a missing file, a resume that would lose work)
prints one line, `error: <what is wrong and what to do>`, on stderr and exits with code 2, once however many
processes run; a bug keeps its traceback. A refusal is a `UserError`, or a `ValueError`, `FileNotFoundError` or
`FileExistsError` that the project's own code raises with a `raise` statement (as its checks do); the same types
raised by a library, or by a built-in call in the project's code (`int("x")`), are bugs or need the traceback. A
package that this Python lacks (a script run outside the project's environment) is refused too: the line says what to
activate or install.

Importing torch, lightning and litdata takes seconds, tens of seconds on a busy machine, so `check_command_line` checks
the packages and the flags first, importing none of them: a misspelt flag is refused at once, with the flag it was
probably meant to be, and so is a number outside its flag's range (`FLAG_RANGES`: a negative count, a seed beyond what
the generators take, NaN) or an output file named like a checkpoint, which both passes check (`check_flag_values`).
This module imports nothing but the standard library (jsonargparse when parsing).
"""

import argparse
import ast
import difflib
import functools
import importlib.util
import inspect
import io
import linecache
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, NoReturn, Optional, Sequence, Set, Tuple, Union

ROOT = Path(__file__).resolve().parents[1]
EXIT_USER_ERROR = 2  # argparse's code for a flag it cannot parse
REFUSALS = (ValueError, FileNotFoundError, FileExistsError)
# flags that take no value, or an optional one
NO_VALUE = {"-h", "--help", "--print_config"}
TYPE_NAMES = {
    f"<class '{name}'>": {"NoneType": "null", "bool": "true or false", "tuple": "a list", "list": "a list"}.get(
        name, name
    )
    for name in ("int", "float", "NoneType", "str", "bool", "tuple", "list", "dict")
}
# flags that jsonargparse adds to every entry function's
PARSER_FLAGS = ("--help", "--config", "--print_config")
# what installs a package that the project's environment may lack on purpose (pyproject.toml's extras)
OPTIONAL = {
    "wandb": "pip install wandb",
    "matplotlib": "pip install matplotlib",
    "transformers": "pip install transformers",
    "torchao": "pip install -e '.[hopper]'",
    "flash_attn": "pip install -e '.[hopper]'",
    "lm_eval": "pip install -e '.[eval]'",
}
# The values each numeric flag of the entry points may take, by name (a name means the same in every script): the
# least, the greatest (None: what a 64-bit integer holds, the most torch and numpy take), and whether the greatest is
# excluded; every float must be finite. A flag missing here is refused at its first run (test_cli walks them all).
INT64_MAX = 2**63 - 1
AT_LEAST_1 = (1, None, False)
AT_LEAST_0 = (0, None, False)
FRACTION = (0, 1, True)  # at least 0 and below 1
FLAG_RANGES: Dict[str, Tuple[float, Optional[float], bool]] = {
    **dict.fromkeys(
        "devices num_nodes global_batch_size micro_batch_size max_tokens max_steps block_size log_interval "
        "eval_interval eval_iters save_interval keep_last max_nonfinite_steps max_seq_length lora_r epochs num_samples "
        "top_k num_blocks batch_size max_source_files chunk_size vocab_size max_lines num_threads decay_steps "
        "anneal_steps spike_window spike_warmup max_spike_steps eval_tasks_interval max_gen_toks "
        # dev/'s instruments
        "micro_batch_sizes accumulation steps size_mb records instruction_words output_words window repeats "
        "context_tokens ending_tokens chunks chunk_tokens items_per_chunk threads dataset_tokens".split(),
        AT_LEAST_1,
    ),
    **dict.fromkeys(
        "eos_id warmup_steps num_workers max_new_tokens learning_rate min_lr weight_decay grad_clip temperature "
        "data_weights train_data z_loss warmup memory_budget checkpoint_gb tolerance noise_ratio seconds "
        # eval_tasks_limit, limit: a count of examples, or a fraction below 1 (0 is refused by the scripts, which say
        # what it means)
        "watchdog_timeout eval_tasks_limit limit num_fewshot".split(),
        AT_LEAST_0,
    ),
    **dict.fromkeys(["beta1", "beta2", "val_fraction", "lora_dropout"], FRACTION),
    "lora_alpha": (0, None, False),
    "decay_fraction": (0, 1, False),  # 0 too: the schedule's check says it must be above
    "seed": (0, 2**32 - 1, False),  # numpy's and Lightning's seed_everything's range
    "spike_factor": (1, None, False),  # the script says it must be above 1
}
# what a refused value's line adds: what the flag means, or what to pass instead
FLAG_HINTS = {
    "seed": "the generators take 0 to 2**32 - 1",
    "block_size": "leave it out for the model's",
    "max_seq_length": "leave it out for the model's block size",
    "max_steps": "leave it out to train for the whole schedule",
    "keep_last": "leave it out to keep every checkpoint",
    "top_k": "pass --top_k null to sample from every token",
    "temperature": "0 decodes greedily",
    "grad_clip": "0 disables clipping",
    "max_new_tokens": "the tokens generated after the prompt",
    "num_samples": "the texts generated from the prompt",
}
# the flags naming a file that a script writes: never a folder or a checkpoint's or weights' name (`--output
# run/step-8.pth` would replace a checkpoint); which formats a script can write it checks itself (`check_suffix`)
OUTPUT_FILES = ("output", "out_file", "scores_output")
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp", "")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".distcp")
# the names that an entry function's annotations and defaults may use in the first, light parse (no import needed)
SIMPLE = dict(Any=Any, Dict=Dict, List=List, Literal=Literal, Optional=Optional, Tuple=Tuple, Union=Union, Path=Path)
SIMPLE.update(bool=bool, float=float, int=int, str=str)


class UserError(Exception):
    """What the user asked cannot be done; the message says what is wrong and what to do, in one line."""


def cli(function: Callable, args: Optional[Sequence[str]] = None) -> Any:
    """Parse the command line (`sys.argv[1:]` unless `args`) into `function`'s parameters and call it."""
    from jsonargparse import CLI  # lazy: the modules that import this one for UserError stay light

    whole_lines(sys.stdout, sys.stderr)
    args = list(sys.argv[1:] if args is None else args)
    try:
        check_values_given(args)
        check_no_empty_paths(args, function)
        return CLI(checked(function), as_positional=False, allow_abbrev=False, exit_on_error=False, args=args)
    except Exception as e:
        if isinstance(e, argparse.ArgumentError):
            message = parse_error_line(str(e), [f"--{name}" for name in inspect.signature(function).parameters])
        elif is_user_error(e):
            message = str(e)
        elif isinstance(e, ModuleNotFoundError) and (package := missing_package(e)):
            message = not_installed([package])
        else:
            raise
    refuse(message)


def whole_lines(*streams: Any) -> None:
    """Write every line of the text `streams` (stdout, stderr) in one piece. The processes of a run share their output
    (a launcher's pipe, the job's log file), and unbuffered (`python -u`, PYTHONUNBUFFERED, as launchers and the tests
    set) `print` writes its text and its newline apart: another process's line could land between them, two lines
    joined into one and the next one's start lost (two ranks leaving a collective print at the same instant)."""
    for stream in streams:
        if isinstance(stream, io.TextIOWrapper) and stream.write_through:
            stream.reconfigure(line_buffering=True, write_through=False)


def checked(function: Callable) -> Callable:
    """`function` (an entry function), refusing first the values that `check_flag_values` refuses: the light pass's
    check again, on the values that the full parse gives (of every type)."""

    @functools.wraps(function)
    def call(**kwargs: Any) -> Any:
        check_flag_values(kwargs)
        return function(**kwargs)

    return call


def refuse(message: str) -> NoReturn:
    """Print `error: message` (once, on rank 0, however many processes run) and exit with code 2."""
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    else:  # every process refuses alike and rank 0 says it: leave it time to, before a launcher stops it
        time.sleep(2)
    _leave_process_group()
    raise SystemExit(EXIT_USER_ERROR)


def check_command_line(module_name: str, script: str) -> None:
    """The first, light pass of an entry point `script` run as a program (`module_name` is `"__main__"`), at the top
    of the script before the imports of torch, lightning or litdata: refuse a Python that lacks a package the script
    imports (`not_installed` says what to activate or install), then parse the command line into a stand-in for the
    entry function (`cli(NAME)` in the `__main__` block), read from the script's source: an unknown flag, a missing
    required one or a value of the wrong type is refused as `cli(NAME)` would refuse it, seconds sooner. A parameter
    whose type or default needs an import (`TemplateName`, `BLOCK_SIZE * 8192`) takes any value here; `cli(NAME)`
    parses everything again after the imports. `--help` and `--print_config` are left to it (they show the real
    function's docstrings and defaults). Nothing happens when the script is imported rather than run."""
    if module_name != "__main__":
        return
    tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    packages = imported_packages(tree) | {"jsonargparse"}
    missing = sorted(name for name in packages if not is_installed(name))
    if missing:
        refuse(not_installed(missing))
    args = sys.argv[1:]
    if any(arg in NO_VALUE or arg.startswith("--print_config") for arg in args):
        return
    function = entry_stand_in(tree)
    if function is not None:
        cli(function, args)


def stop_quietly_before_training(module_name: str) -> None:
    """For a training script run as a program (`module_name` is `"__main__"`), right after `check_command_line`: a
    stop signal before the training loop takes them over (`lit_gpt.signals.StopSignal`), Ctrl-C's SIGINT, a
    scheduler's SIGTERM or SLURM's SIGUSR1, ends the run with one line that says so and that nothing was saved, and
    with the code a shell expects of it (128 + the signal's number: 130, 143), not a KeyboardInterrupt traceback or no
    word. Said once, by rank 0; processes forked from this one (data-loader workers) keep the default action."""
    if module_name != "__main__":
        return
    pid = os.getpid()

    def stop(signum: int, frame) -> None:
        if os.getpid() != pid:  # a forked child that did not set its own handlers: as without this one
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if rank() == 0:
            name = signal.Signals(signum).name
            print(f"Stopped by {name} before the first training step: nothing was saved", file=sys.stderr, flush=True)
        # the exit may leave an object half-built (litdata's BinaryReader stopped in its __init__): its finalizer's
        # "Exception ignored in ... AttributeError" would follow the one line, so such noise is not printed after it
        sys.unraisablehook = lambda unraisable: None
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, stop)


def imported_packages(tree: ast.Module, seen: Optional[Set[Path]] = None) -> Set[str]:
    """The packages outside the standard library that a module imports at its top level, itself or through the
    `lit_gpt` modules it imports (imports inside functions are of optional packages, and checked where they happen:
    `missing_package`)."""
    seen = set() if seen is None else seen
    packages = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from lit_gpt import flops` imports the module lit_gpt.flops
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top != "lit_gpt":
                packages |= set() if top in sys.stdlib_module_names else {top}
                continue
            for path in _source_files(module):
                if path not in seen:
                    seen.add(path)
                    packages |= imported_packages(ast.parse(path.read_text(encoding="utf-8")), seen)
    return packages


def _source_files(module: str) -> List[Path]:
    """The files of this checkout that importing `module` runs: its packages' `__init__.py` and its own."""
    parts = module.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        path = ROOT.joinpath(*parts[:i])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if path.is_file():
            files.append(path)
    return files


def is_installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules without a spec: imported somehow
        return True


def not_installed(packages: List[str]) -> str:
    """The line for `packages` that this Python lacks: the optional ones' install command, or the project's
    environment to activate, or to create or complete."""
    names = " and ".join([", ".join(packages[:-1]), packages[-1]] if len(packages) > 1 else packages)
    lacks = f"{names} {'is' if len(packages) == 1 else 'are'} not installed in this Python ({sys.executable})"
    if all(name in OPTIONAL for name in packages):
        return f"{lacks}: {'; '.join(sorted({f'`{OPTIONAL[name]}`' for name in packages}))} installs it"
    venv = ROOT / ".venv"
    shown = os.path.relpath(venv) if not os.path.relpath(venv).startswith("..") else str(venv)
    if venv.is_dir() and Path(sys.prefix).resolve() == venv.resolve():
        return f"{lacks}, the project's environment {shown}: `make install` (or `bash scripts/install.sh`) installs it"
    if (venv / "bin" / "activate").is_file():
        return (
            f"{lacks}; run the scripts in the project's environment: `source {shown}/bin/activate` first, or "
            f"`{shown}/bin/python` instead of python"
        )
    return (
        f"{lacks}; create the project's environment with `make install` (or `bash scripts/install.sh`), then "
        f"`source {shown}/bin/activate`"
    )


def missing_package(e: ModuleNotFoundError) -> Optional[str]:
    """The package that an import statement of the project's own code (a lazy import of an optional package) did not
    find, or None: a module that a library misses is the library's problem, kept with its traceback."""
    package = (e.name or "").split(".")[0]
    if not package or is_installed(package):
        return None
    tb, importer = e.__traceback__, None
    while tb is not None:  # the innermost frame outside importlib's: the import statement
        if not tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
            importer = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return package if importer is not None and _is_project_file(Path(importer)) else None


def entry_stand_in(tree: ast.Module) -> Optional[Callable]:
    """A function with the parameters of the script's entry function (`cli(NAME)` in its `__main__` block), whose
    annotations and defaults keep what the builtins, `typing` and `Path` can say (`Optional[int]`, `Path("data")`);
    a parameter with another type or default takes any value. None if the script has no such call."""
    calls = [
        call
        for node in tree.body
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        for call in ast.walk(node)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "cli" and call.args
    ]
    name = getattr(calls[0].args[0], "id", None) if calls else None
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if function is None:
        return None
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    defaults = [None] * (len(positional) - len(arguments.defaults)) + arguments.defaults
    parameters = []
    for arg, default in [*zip(positional, defaults), *zip(arguments.kwonlyargs, arguments.kw_defaults)]:
        annotation = _simple_value(arg.annotation) if arg.annotation is not None else Any
        annotation = Any if isinstance(annotation, str) else annotation  # a forward reference: "GPT"
        value = inspect.Parameter.empty if default is None else _simple_value(default, unknown=_UNKNOWN)
        if value is _UNKNOWN:
            annotation, value = Any, None
        parameters.append(
            inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=annotation)
        )

    def stand_in(**kwargs: Any) -> None:
        pass

    stand_in.__name__ = stand_in.__qualname__ = name
    stand_in.__signature__ = inspect.Signature(parameters)
    stand_in.__annotations__ = {p.name: p.annotation for p in parameters}
    return stand_in


_UNKNOWN = object()


def _simple_value(node: ast.expr, unknown: Any = Any) -> Any:
    """The value of an annotation or default written with the names of SIMPLE and literals only, else `unknown`."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    if names - SIMPLE.keys() or any(isinstance(n, (ast.Attribute, ast.Lambda, ast.NamedExpr)) for n in ast.walk(node)):
        return unknown
    try:
        return eval(compile(ast.Expression(node), "<signature>", "eval"), {"__builtins__": {}}, dict(SIMPLE))
    except Exception:
        return unknown


def check_values_given(args: List[str]) -> None:
    """Refuse a flag directly followed by another flag or by nothing: every flag of these scripts takes a value, so
    this is `--access_token $HF_TOKEN` with the variable unset (the shell passes nothing), which argparse reports as
    "expected one argument"."""

    def is_flag(arg: str) -> bool:  # as argparse: an argument with a space is a value even if it starts with --
        return arg.startswith("--") and len(arg) > 2 and " " not in arg

    i = 0
    while i < len(args):
        arg = args[i]
        if is_flag(arg) and "=" not in arg and arg not in NO_VALUE:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or is_flag(following):
                raise UserError(
                    f"{arg} was given no value{' (it is the last argument)' if following is None else ''}; if the "
                    f"value was a shell variable such as $HF_TOKEN, it is unset or empty: set it, or leave {arg} out"
                    + ("" if following is None else f" (a value that starts with -- is written {arg}={following})")
                )
            i += 1  # its value
        i += 1


def is_path_flag(name: str, annotation: Any) -> bool:
    """Whether the parameter `name` of an entry function takes a path: typed `Path` (alone, optional or among others),
    or named as one (`*_dir`, `*_path`, `*_file`, `*_data`, `output`, `data`, `input`), such as `--data_dir` typed
    `str` for its object-store URLs."""
    named = name.endswith(("_dir", "_path", "_file", "_data")) or name in ("output", "data", "input")
    return named or "Path" in str(annotation)


def check_no_empty_paths(args: List[str], function: Callable) -> None:
    """Refuse an empty value of a path flag (`--out_dir ''`, `--output=`): an empty path is the working directory, so a
    run would write its checkpoints and lock there, a script scan it or write `.png` in it."""
    parameters = inspect.signature(function).parameters
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        flag, given, value = arg.partition("=")
        value = value if given else (args[i + 1] if i + 1 < len(args) else None)
        parameter = parameters.get(flag[2:])
        if value is not None and parameter and is_path_flag(parameter.name, parameter.annotation):
            check_not_empty_path(flag, value, has_default=parameter.default is not parameter.empty)


def check_not_empty_path(flag: str, value: Any, has_default: bool = False) -> None:
    """Refuse an empty (or blank) path given to `flag`, which would mean the working directory: the one line of
    `check_no_empty_paths`, also for a path inside a flag's value (a folder of `--train_data`, an item of a list)."""
    if not str(value).strip():
        default = f", or leave {flag} out for its default" if has_default else ""
        raise UserError(
            f"{flag} {str(value)!r} is an empty path, which would mean the current folder; pass a path ('.' for the "
            f"current folder){default}"
        )


def check_flag_values(values: Dict[str, Any]) -> None:
    """Refuse, naming the flag, a numeric value outside `FLAG_RANGES` (a negative count, a zero where it means nothing,
    a seed beyond what the generators take, NaN or infinity) and an output file of `OUTPUT_FILES` that would replace
    a folder or a checkpoint. `values` are an entry function's parsed flags; a value of another type (a flag typed in
    a way the light pass cannot read, `None` for a default) is left to the entry function."""
    for name, value in values.items():
        numbers = _numbers(value)
        if numbers:
            if name not in FLAG_RANGES:
                raise UserError(f"--{name} has no range in lit_gpt/cli.py's FLAG_RANGES: add one (a bug, not yours)")
            for number in numbers:
                _check_range(name, number, value)
        if name in OUTPUT_FILES and isinstance(value, (str, Path)) and str(value).strip():
            _check_output_file(name, Path(value))


def _numbers(value: Any) -> List[Union[int, float]]:
    """The numbers of a flag's value: itself, a list's or tuple's items, a mapping's values (weights)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _check_range(name: str, number: Union[int, float], value: Any) -> None:
    least, greatest, below = FLAG_RANGES[name]
    greatest = INT64_MAX if greatest is None and isinstance(number, int) else greatest
    finite = not isinstance(number, float) or math.isfinite(number)
    too_large = finite and greatest is not None and (number >= greatest if below else number > greatest)
    if finite and number >= least and not too_large:
        return
    if not finite:
        problem = "must be a finite number"
    elif below:
        problem = f"must be at least {least} and below {greatest}"
    elif number < least:
        problem = "must not be negative" if least == 0 else f"must be at least {least}"
    else:
        problem = f"must be at most {greatest:_}"
    shown = (
        value if isinstance(value, (int, float)) else f"{list(value) if isinstance(value, tuple) else value}: {number}"
    )
    hint = f" ({FLAG_HINTS[name]})" if name in FLAG_HINTS else ""
    raise UserError(f"--{name} {shown} {problem}{hint}")


def _check_output_file(name: str, path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--{name} {str(path)!r} is a folder; pass the file to write (a new name, or one to replace)")
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        exists = ", and the file exists" if path.exists() else ""
        raise UserError(
            f"--{name} {str(path)!r} is a checkpoint's or weights' name{exists}; pass a file name that ends as the "
            "output is"
        )


def check_suffix(name: str, path: Optional[Path], suffixes: Tuple[str, ...]) -> None:
    """Refuse an output file `--name path` whose suffix is not one of the formats `suffixes` that the script writes."""
    if path is not None and path.suffix.lower() not in suffixes:
        kinds = ", ".join(s for s in suffixes if s)
        raise UserError(f"--{name} {str(path)!r} is not a format it writes; pass a file name ending in one of {kinds}")


def parse_error_line(message: str, flags: Sequence[str] = ()) -> str:
    """jsonargparse's report of a flag it could not parse, in one line: `Parser key "max_steps": ... Given value:
    abc` (several lines, with the Union's subtypes) becomes `--max_steps 'abc' is not int or null`. An unknown flag
    is given the one of `flags` it was probably meant to be."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)":(.*)', lines[0]) if lines else None
    if key is None:
        required = re.match(r"the following arguments are required: (.*)$", lines[0]) if lines else None
        if required:  # argparse names them by their dest: say the flags a user types
            names = ", ".join(f"--{n.strip()}" for n in required[1].split(",") if n.strip())
            lines = [f"the following flags are required: {names}", *lines[1:]]
        stray = re.match(r"unrecognized arguments: (?!-)", lines[0]) if lines else None  # a value without its flag
        hint = " (each value follows its flag; several values of one flag are one list: --data '[a.json, b.json]')"
        unknown = re.match(r"unrecognized arguments: (.*)$", lines[0]) if lines else None
        hint = (hint if stray else "") + did_you_mean(unknown[1].split() if unknown else [], flags)
        return f"{' '.join(lines)}{hint}; `--help` lists every flag"
    given = re.search(r"(?:Given|Got) value: (.*)$", message)
    expected = re.findall(r"Expected a (.+?)(?:\. Got value: .*)?$", message, re.M)
    expected = [re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", TYPE_NAMES.get(t, t)) for t in expected]
    value = f" {given[1]!r}" if given else ""
    what = f"is not {' or '.join(expected)}" if expected else f"is not valid: {' '.join(lines[1:])}"
    return f"--{key[1]}{value} {what} (`--help` describes the flag)"


def did_you_mean(arguments: Sequence[str], flags: Sequence[str]) -> str:
    """` (did you mean --model_name?)` for the unknown flags among `arguments` that are near misses of `flags`."""
    guesses = {arg.split("=", 1)[0]: guess for arg in arguments if (guess := near_miss(arg, flags))}
    if len(guesses) > 1:
        return f" (did you mean {' and '.join(f'{guess} for {arg}' for arg, guess in guesses.items())}?)"
    return f" (did you mean {guesses.popitem()[1]}?)" if guesses else ""


def near_miss(flag: str, flags: Sequence[str]) -> Optional[str]:
    """The flag of `flags` that an unknown `flag` probably meant (`--modle_name`, `--model-name`: `--model_name`;
    `--prec`: `--precision`), or several separated by "or", or None."""
    if not flag.startswith("--"):
        return None
    name = flag[2:].split("=", 1)[0].rstrip("+").replace("-", "_")
    names = [f[2:] for f in [*flags, *PARSER_FLAGS]]
    if name in names:
        return f"--{name}"
    scored = sorted(((difflib.SequenceMatcher(None, name, n).ratio(), n) for n in names), reverse=True)
    # the closest, and the next only if about as close (--batch_size: --micro_batch_size or --global_batch_size)
    guesses = [n for ratio, n in scored[:2] if ratio >= max(0.7, scored[0][0] - 0.05)]
    guesses = guesses or [n for n in names if n.startswith(name)][:2]  # --prec: --precision
    return " or ".join(f"--{guess}" for guess in guesses) or None


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, UserError):
        return True
    if not isinstance(e, REFUSALS) or e.__traceback__ is None:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    return _is_project_file(path) and linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise ")


def _is_project_file(path: Path) -> bool:
    path = path.resolve()
    return ROOT in path.parents and "site-packages" not in path.parts and ".venv" not in path.parts


def rank() -> int:
    """This process's rank in a job of several (0 when alone), before or after the process group is set up."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "RANK" in os.environ:  # torchrun, `fabric run`
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return int(os.environ.get("LOCAL_RANK", "0"))  # processes that Fabric's launcher started


def _leave_process_group() -> None:
    # without this, torch warns on exit that the process group was not destroyed
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
