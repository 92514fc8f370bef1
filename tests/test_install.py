"""scripts/torch_source.py, the choice of torch build in scripts/install.sh, run as install.sh runs it, with the machine
faked: PATH with or without an `nvidia-smi`, pip's configuration in a temporary pip.conf, tiny fake torch wheels in a
local wheel store, and no network (`no-index`)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_TORCH = ["nvidia-cublas-cu12==12.4.5.8", "triton==3.1.0"]


def fake_wheel(directory: Path, name: str, version: str, requires=()) -> Path:
    """A wheel with metadata and nothing else, enough for pip to resolve it."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist_info}/RECORD,,\n"
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def choose(tmp: Path, store=None, gpu: str = "", build: str = "auto") -> tuple:
    """(pip arguments, message) of scripts/torch_source.py on a machine whose pip.conf finds wheels only in `store`
    and with an `nvidia-smi` on PATH (gpu="nvidia-smi"), a driver entry in /proc (gpu="driver") or neither."""
    bin_dir, driver = tmp / "bin", tmp / "proc-driver-nvidia"
    bin_dir.mkdir(exist_ok=True)
    if gpu == "nvidia-smi":
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    if gpu == "driver":
        driver.mkdir()
    config = tmp / "pip.conf"
    config.write_text(f"[global]\nno-index = true\nfind-links = {store or tmp / 'empty'}\n")
    env = {"PATH": str(bin_dir), "HOME": str(tmp), "PIP_CONFIG_FILE": str(config), "TORCH_BUILD": build}
    cmd = [sys.executable, "scripts/torch_source.py", "--spec", "torch==2.13.0", "--driver_file", str(driver)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def test_no_gpu_and_no_local_store_takes_pytorch_cpu_index(tmp_path):
    args, message = choose(tmp_path)
    assert args == ["--index-url", CPU_INDEX, "torch==2.13.0+cpu"]
    assert "no NVIDIA GPU; pip's configured sources do not resolve torch==2.13.0" in message
    assert f"taking the CPU build from {CPU_INDEX}" in message


def test_no_gpu_and_local_store_with_cpu_torch_takes_the_store(tmp_path):
    fake_wheel(tmp_path / "wheels", "torch", "2.13.0+cpu")
    args, message = choose(tmp_path, store=tmp_path / "wheels")
    assert args == ["torch==2.13.0"]
    assert "pip's configured sources offer a CPU build: torch 2.13.0+cpu (torch-2.13.0+cpu-py3-none-any.whl)" in message


def test_no_gpu_and_a_store_with_the_cuda_build_takes_the_cpu_index(tmp_path):
    """What PyPI serves on Linux: torch==2.13.0 that pulls nvidia-* wheels."""
    fake_wheel(tmp_path / "wheels", "torch", "2.13.0", CUDA_TORCH)
    args, message = choose(tmp_path, store=tmp_path / "wheels")
    assert args == ["--index-url", CPU_INDEX, "torch==2.13.0+cpu"]
    assert "would install torch 2.13.0 (torch-2.13.0-py3-none-any.whl), with CUDA (nvidia-cublas-cu12)" in message


def test_cuda_requirements_for_another_platform_are_a_cpu_build(tmp_path):
    """PyPI's macOS torch lists nvidia-* requirements for Linux only: it is the CPU build there."""
    fake_wheel(tmp_path / "wheels", "torch", "2.13.0", ['nvidia-cublas-cu12==12.4.5.8; platform_system == "NoSuchOS"'])
    args, message = choose(tmp_path, store=tmp_path / "wheels")
    assert args == ["torch==2.13.0"] and "offer a CPU build" in message


@pytest.mark.parametrize("gpu", ["nvidia-smi", "driver"])
def test_a_gpu_keeps_the_default_build(tmp_path, gpu):
    fake_wheel(tmp_path / "wheels", "torch", "2.13.0", CUDA_TORCH)
    args, message = choose(tmp_path, store=tmp_path / "wheels", gpu=gpu)
    assert args == ["torch==2.13.0"]
    assert "an NVIDIA GPU (" in message and "the CUDA build" in message


def test_torch_build_overrides_the_detection(tmp_path):
    assert choose(tmp_path, build="cuda")[0] == ["torch==2.13.0"]  # a login node without a GPU, for GPU nodes
    assert choose(tmp_path, gpu="nvidia-smi", build="cpu")[0] == ["--index-url", CPU_INDEX, "torch==2.13.0+cpu"]


def _dry_run(tmp: Path, args: list, *stores: Path) -> dict:
    """name -> version of what `pip install args` installs, resolved offline from the wheel folders `stores`."""
    report = tmp / "report.json"
    links = [arg for store in stores for arg in ("--find-links", str(store))]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--isolated", "--no-index"]
    cmd += ["--quiet", "--report", str(report), *links, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def test_the_chosen_command_resolves_without_nvidia_packages(tmp_path):
    """The arguments chosen on a machine without a GPU and without a local store, resolved with dependencies by pip
    where both builds are offered (PyPI's, which pulls nvidia-* wheels, and the CPU index's): torch alone."""
    pypi, cpu_index = tmp_path / "pypi", tmp_path / "cpu-index"
    fake_wheel(pypi, "torch", "2.13.0", CUDA_TORCH)
    fake_wheel(pypi, "nvidia-cublas-cu12", "12.4.5.8")
    fake_wheel(pypi, "triton", "3.1.0")
    fake_wheel(cpu_index, "torch", "2.13.0+cpu")
    assert _dry_run(tmp_path, ["torch==2.13.0"], pypi) == {  # the request install.sh made before
        "torch": "2.13.0",
        "nvidia-cublas-cu12": "12.4.5.8",
        "triton": "3.1.0",
    }
    args, _ = choose(tmp_path)
    assert _dry_run(tmp_path, args, pypi, cpu_index) == {"torch": "2.13.0+cpu"}  # --no-index: the folder stands in


@pytest.mark.parametrize("version", ["2.13.0+cu118", "2.13.0+rocm6.2"])
def test_no_gpu_and_a_store_with_a_gpu_build_that_bundles_its_libraries_takes_the_cpu_index(tmp_path, version):
    """PyTorch's own GPU wheels (`+cu118`, `+rocm6.2`) carry their CUDA or ROCm libraries inside, so they require no
    nvidia-* package: their local version says what they are."""
    fake_wheel(tmp_path / "wheels", "torch", version)
    args, message = choose(tmp_path, store=tmp_path / "wheels")
    assert args == ["--index-url", CPU_INDEX, "torch==2.13.0+cpu"]
    assert f"would install torch {version} (torch-{version}-py3-none-any.whl), a GPU build" in message
