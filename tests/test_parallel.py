"""When FSDP2 gathers the weights: the default policy, and what `reshard_after_forward` / `reshard_after_backward`
change in a real 2-process run of the benchmark (its profiler trace counts the all-gathers)."""

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_weights_stay_gathered_only_where_they_fit(monkeypatch):
    from lit_gpt.config import Config
    from lit_gpt.flops import num_parameters
    from lit_gpt.training.parallel import keep_weights_gathered

    tiny, big = (num_parameters(Config.from_name(n), True) for n in ("tiny-llama-1.1b", "Llama-2-7b-hf"))
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert keep_weights_gathered(big, 1, cpu)  # one process per shard group: nothing to gather
    assert not keep_weights_gathered(tiny, 2, cpu)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    assert keep_weights_gathered(tiny, 8, gpu)  # 2.2 GB of bf16 weights on an 80 GiB GPU
    assert not keep_weights_gathered(big, 8, gpu)  # 13.5 GB
    assert not keep_weights_gathered(tiny, 8, gpu, precision="32-true")  # 4.4 GB of float32 weights
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=40 * 2**30))
    assert not keep_weights_gathered(tiny, 2, gpu)
    # --accelerator cuda on a machine without one: no decision here, Fabric says what is wrong
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not keep_weights_gathered(tiny, 2, gpu)


def all_gathers(trace: Path) -> Counter:
    """FSDP module name -> all-gathers of its weights in one traced step."""
    events = json.load(gzip.open(trace))["traceEvents"]
    return Counter(e["name"] for e in events if e.get("name", "").startswith("FSDP::all_gather (transformer.h."))


@pytest.mark.slow  # ~60 s on 2 cores: three 2-process runs
def test_reshard_choices_set_the_all_gathers_per_step_and_keep_results_bit_identical(tmp_path):
    accumulation, n_layer = 3, 4  # micro-llama
    choices = {  # reshard after forward, after backward
        "per_block": ("true", "true"),  # ZeRO-3: the default of large models
        "forward_kept": ("false", "true"),
        "step_kept": ("false", "false"),  # the default of small ones
    }
    results = {}
    for name, (forward, backward) in choices.items():
        out = tmp_path / name
        cmd = [sys.executable, str(ROOT / "dev" / "benchmark.py"), "--model_name", "micro-llama", "--devices", "2"]
        cmd += ["--micro_batch_sizes", "[2]", "--block_size", "32", "--accumulation", str(accumulation)]
        cmd += ["--precision", "32-true", "--steps", "1", "--warmup", "1", "--trace", "true", "--out_dir", str(out)]
        cmd += ["--reshard_after_forward", forward, "--reshard_after_backward", backward]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        (result,) = json.loads((out / "benchmark.json").read_text())
        results[name] = result
        for rank in (0, 1):
            results[name, rank] = all_gathers(out / f"trace-rank{rank}-mbs2.json.gz")

    blocks = [f"FSDP::all_gather (transformer.h.{i})" for i in range(n_layer)]
    n = accumulation
    for rank in (0, 1):
        # freed after every forward (except the last block's, needed first in backward) and backward: two per
        # micro-batch
        assert [results["per_block", rank][b] for b in blocks] == [2 * n] * (n_layer - 1) + [n]
        # kept from forward to backward: one per micro-batch
        assert [results["forward_kept", rank][b] for b in blocks] == [n] * n_layer
        # kept from the first forward to the last backward: one per step
        assert [results["step_kept", rank][b] for b in blocks] == [1] * n_layer
    assert results["step_kept"]["loss"] == results["forward_kept"]["loss"] == results["per_block"]["loss"]
