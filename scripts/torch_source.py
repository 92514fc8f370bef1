"""Where scripts/install.sh takes torch from: the CUDA build on a machine with an NVIDIA GPU, a CPU build without one.

    python scripts/torch_source.py --spec torch==2.13.0

prints the arguments of `pip install` for torch, one per line, and on stderr which build it chose and why:

- an NVIDIA GPU (`nvidia-smi` on PATH, or the driver's /proc/driver/nvidia): `--spec` from pip's configured index,
  which for PyPI's Linux wheels is the CUDA build;
- no GPU, and pip's configured sources (pip.conf, PIP_* variables: a local wheel store, a mirror) already resolve
  `--spec` to a CPU build (a `+cpu` version, or one that requires no nvidia-*/cuda-* packages, as on macOS, and is
  not one of PyTorch's `+cu*`/`+rocm*` builds, which carry their libraries inside): the
  same, from there;
- no GPU otherwise: the CPU build from PyTorch's CPU index (`--index-url https://download.pytorch.org/whl/cpu`,
  `torch==X+cpu`), instead of the CUDA build and its nvidia-*/cuda-* wheels that PyPI serves on Linux.

`--build cuda` (TORCH_BUILD=cuda for install.sh) keeps `--spec` as it is, for a venv built on a login node without a
GPU for GPU nodes; `--build cpu` takes the CPU index even where there is a GPU.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Literal, Optional, Tuple
from urllib.parse import unquote

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_PACKAGE = re.compile(r"^(nvidia|cuda)[-_.]", re.IGNORECASE)


def choose(
    spec: str = "torch==2.13.0",
    build: Literal["auto", "cpu", "cuda"] = "auto",
    python: str = sys.executable,
    driver_file: Path = Path("/proc/driver/nvidia"),
) -> Tuple[List[str], str]:
    """The `pip install` arguments for torch and a line saying which build they install and why."""
    if build == "cuda":
        return [spec], f"{spec} from pip's configured index (TORCH_BUILD=cuda)"
    if build == "cpu":
        return cpu_index_args(spec), f"the CPU build from {CPU_INDEX} (TORCH_BUILD=cpu)"
    gpu = "nvidia-smi" if shutil.which("nvidia-smi") else str(driver_file) if driver_file.exists() else None
    if gpu:
        return [spec], f"an NVIDIA GPU ({gpu}): {spec} from pip's configured index (the CUDA build on Linux)"
    resolved, problem = resolve(spec, python)
    if resolved is not None and not problem:
        return [spec], f"no NVIDIA GPU; pip's configured sources offer a CPU build: {resolved}"
    why = f"pip's configured sources would install {resolved}, {problem}" if resolved else problem
    return cpu_index_args(spec), f"no NVIDIA GPU; {why}: taking the CPU build from {CPU_INDEX}"


def cpu_index_args(spec: str) -> List[str]:
    """`torch==2.13.0` -> the CPU index and `torch==2.13.0+cpu`; other specifiers only get the index, which holds
    nothing but CPU builds."""
    m = re.fullmatch(r"\s*torch\s*==\s*([0-9][0-9a-zA-Z.]*)\s*", spec)
    return ["--index-url", CPU_INDEX, f"torch=={m.group(1)}+cpu" if m else spec]


def resolve(spec: str, python: str) -> Tuple[Optional[str], str]:
    """(what pip's configuration resolves `spec` to, "" if it is a CPU build or else what makes it a CUDA one), from
    `pip install --dry-run --report` (metadata only, nothing installed); (None, why) if pip cannot resolve it."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
        cmd += ["--disable-pip-version-check", "--report", str(report), spec]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return None, f"pip's configured sources did not resolve {spec} within 5 minutes"
        if proc.returncode != 0 or not report.is_file():
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or [""]
            return None, f"pip's configured sources do not resolve {spec} ({errors[0].strip()})"
        installs = json.loads(report.read_text())["install"]
    if not installs:
        return None, f"pip resolved {spec} to nothing"
    metadata, url = installs[0]["metadata"], installs[0].get("download_info", {}).get("url", "")
    found = f"torch {metadata['version']} ({unquote(url.rsplit('/', 1)[-1])})"
    local = metadata["version"].partition("+")[2]
    if local == "cpu":
        return found, ""
    if re.match(r"(cu|rocm)\d", local):  # PyTorch's own GPU wheels carry their libraries, requiring no nvidia-*
        return found, "a GPU build"
    cuda = [name for name in _requirements(metadata.get("requires_dist") or []) if CUDA_PACKAGE.match(name)]
    return found, f"with CUDA ({', '.join(cuda[:3])}{', ...' if len(cuda) > 3 else ''})" if cuda else ""


def _requirements(requires_dist: List[str]) -> List[str]:
    """The names of the Requires-Dist entries that apply on this machine (their environment markers, no extras)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a fresh venv has pip's copy
        from pip._vendor.packaging.requirements import Requirement
    requirements = [Requirement(line) for line in requires_dist]
    return [r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def build_parser():
    """The command line (argparse: install.sh runs this before jsonargparse is installed)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=os.environ.get("TORCH_SPEC", "torch==2.13.0"), help="the torch requirement")
    parser.add_argument(
        "--build",
        choices=("auto", "cpu", "cuda"),
        default=os.environ.get("TORCH_BUILD", "auto"),
        help="auto: CPU build without an NVIDIA GPU, pip's default with one; cpu / cuda: force it (env TORCH_BUILD)",
    )
    parser.add_argument("--python", default=sys.executable, help="the Python whose pip resolves --spec (the venv's)")
    parser.add_argument(
        "--driver_file",
        type=Path,
        default=Path("/proc/driver/nvidia"),
        help="the NVIDIA kernel driver's /proc entry, which shows a GPU where nvidia-smi is not on PATH",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.build not in ("auto", "cpu", "cuda"):
        parser.error(f"TORCH_BUILD={args.build!r}: use auto, cpu or cuda")
    pip_args, why = choose(args.spec, args.build, args.python, args.driver_file)
    print(f"[install] torch: {why}", file=sys.stderr)
    print("\n".join(pip_args))


if __name__ == "__main__":
    main()
