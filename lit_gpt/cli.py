"""The command line of every entry point: `cli(main)` in its `__main__` block.

The flags are `main`'s parameters, parsed by jsonargparse with whole names only (`--max_step 3` is refused, not taken
for `--max_steps`). A refusal of what the user asked (a bad flag value, a missing file, a resume that would lose work)
prints one line, `error: <what is wrong and what to do>`, on stderr and exits with code 2, once however many
processes run; a bug keeps its traceback. A refusal is a `UserError`, or a `ValueError`, `FileNotFoundError` or
`FileExistsError` that the project's own code raises with a `raise` statement (as its checks do); the same types
raised by a library, or by a built-in call in the project's code (`int("x")`), are bugs or need the traceback.
"""

import argparse
import linecache
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
EXIT_USER_ERROR = 2  # argparse's code for a flag it cannot parse
REFUSALS = (ValueError, FileNotFoundError, FileExistsError)
# flags that take no value, or an optional one
NO_VALUE = {"-h", "--help", "--print_config"}
TYPE_NAMES = {"<class 'int'>": "int", "<class 'float'>": "float", "<class 'NoneType'>": "null", "<class 'str'>": "str"}


class UserError(Exception):
    """What the user asked cannot be done; the message says what is wrong and what to do, in one line."""


def cli(function: Callable, args: Optional[Sequence[str]] = None) -> Any:
    """Parse the command line (`sys.argv[1:]` unless `args`) into `function`'s parameters and call it."""
    from jsonargparse import CLI

    args = list(sys.argv[1:] if args is None else args)
    try:
        check_values_given(args)
        return CLI(function, as_positional=False, allow_abbrev=False, exit_on_error=False, args=args)
    except Exception as e:
        if isinstance(e, argparse.ArgumentError):
            message = parse_error_line(str(e))
        elif is_user_error(e):
            message = str(e)
        else:
            raise
        if rank() == 0:
            print(f"error: {message}", file=sys.stderr)
        else:  # every process refuses alike and rank 0 says it: leave it time to, before a launcher stops it
            time.sleep(2)
        _leave_process_group()
        raise SystemExit(EXIT_USER_ERROR) from None


def check_values_given(args: List[str]) -> None:
    """Refuse a flag directly followed by another flag or by nothing: every flag of these scripts takes a value, so
    this is `--access_token $HF_TOKEN` with the variable unset (the shell passes nothing), which argparse reports as
    "expected one argument"."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" not in arg and arg not in NO_VALUE:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or (following.startswith("--") and len(following) > 2):
                raise UserError(
                    f"{arg} was given no value{' (it is the last argument)' if following is None else ''}; if the "
                    f"value was a shell variable such as $HF_TOKEN, it is unset or empty: set it, or leave {arg} out"
                )


def parse_error_line(message: str) -> str:
    """jsonargparse's report of a flag it could not parse, in one line: `Parser key "max_steps": ... Given value:
    abc` (several lines, with the Union's subtypes) becomes `--max_steps 'abc' is not int or null`."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)":(.*)', lines[0]) if lines else None
    if key is None:
        required = re.match(r"the following arguments are required: (.*)$", lines[0]) if lines else None
        if required:  # argparse names them by their dest: say the flags a user types
            names = ", ".join(f"--{n.strip()}" for n in required[1].split(",") if n.strip())
            lines = [f"the following flags are required: {names}", *lines[1:]]
        stray = re.match(r"unrecognized arguments: (?!-)", lines[0]) if lines else None  # a value without its flag
        hint = " (each value follows its flag; several values of one flag are one list: --data '[a.json, b.json]')"
        return f"{' '.join(lines)}{hint if stray else ''}; `--help` lists every flag"
    given = re.search(r"(?:Given|Got) value: (.*)$", message)
    expected = re.findall(r"Expected a (.+?)(?:\. Got value: .*)?$", message, re.M)
    expected = [re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", TYPE_NAMES.get(t, t)) for t in expected]
    value = f" {given[1]!r}" if given else ""
    what = f"is not {' or '.join(expected)}" if expected else f"is not valid: {' '.join(lines[1:])}"
    return f"--{key[1]}{value} {what} (`--help` describes the flag)"


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, UserError):
        return True
    if not isinstance(e, REFUSALS) or e.__traceback__ is None:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    ours = ROOT in path.parents and "site-packages" not in path.parts and ".venv" not in path.parts
    return ours and linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise ")


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
