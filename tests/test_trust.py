"""Checkpoints from elsewhere: a planted sharded checkpoint runs no code; pickles are unpickled only when trusted."""

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import BLOCK, COMMON, SCRIPT, _build, _env, same_tokens

from lit_gpt.config import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def same_data_dir(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("same-data"), same_tokens, 40)


class _Payload:
    """Unpickled, it opens `marker` for writing, creating it: what any code run by a malicious pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_sharded_checkpoint(path: Path, marker: Path) -> Path:
    """A `step-*.pth/` directory like a 1-process run of test_pretrain.py's COMMON flags would write, with a `meta.pt`
    that fits the run and a `.metadata` pickle whose payload creates `marker`."""
    path.mkdir(parents=True)
    config = Config.from_name("micro-llama", block_size=BLOCK).to_dict()
    hparams = {"model_config": config, "model_name": "micro-llama", "world_size": 1, "micro_batch_size": 2}
    hparams.update(num_workers=1, seed=3407)
    torch.save({"hparams": hparams, "step_count": 4, "iter_num": 16, "tokens_seen": 1024}, path / "meta.pt")
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    (path / "__0_0.distcp").write_bytes(b"")
    return path


def test_planted_sharded_checkpoint_runs_no_code_on_resume_or_conversion(tmp_path, same_data_dir, export_tokenizer_dir):
    from scripts.convert_pretrained_checkpoint import convert

    marker = tmp_path / "pwned"
    out_dir = tmp_path / "out"
    planted = plant_sharded_checkpoint(out_dir / "step-00000004.pth", marker)
    message = (
        r"\.metadata names (io|builtins)\.open, which the metadata of a sharded checkpoint never.*--trust_pickle true"
    )

    with pytest.raises(ValueError, match=message):
        convert(planted, export_tokenizer_dir, output_dir=tmp_path / "lit")
    assert not marker.exists() and not (tmp_path / "lit").exists()

    base = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(same_data_dir), "--devices", "1"]
    base += ["--max_steps", "6"]
    # --resume auto picks up the planted directory as the newest checkpoint; both runs at once, to save time
    outs = {"auto": out_dir, str(planted): tmp_path / "other"}
    procs = {
        resume: subprocess.Popen(base + ["--out_dir", str(out), "--resume", resume], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_env())
        for resume, out in outs.items()
    }  # fmt: skip
    for resume, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode != 0, (resume, stdout[-2000:])
        assert re.search(message, stderr.strip().splitlines()[-1]), stderr[-2000:]
    assert not marker.exists()


def test_trust_pickle_reads_a_legacy_pickle(fabric_checkpoints, export_tokenizer_dir, tmp_path, register_test_llama):
    """A checkpoint written without the zip format (`_use_new_zipfile_serialization=False`, older tools) that holds
    pickled objects: refused, then read with --trust_pickle true (it used to fail: a legacy file cannot be mmapped)."""
    import argparse

    from scripts.convert_pretrained_checkpoint import convert

    raw = torch.load(fabric_checkpoints["single"], weights_only=True)
    path = tmp_path / "legacy.pth"
    torch.save({"model": raw["model"], "args": argparse.Namespace(lr=1e-3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="pickled Python objects.*--trust_pickle true"):
        convert(path, export_tokenizer_dir, "test-llama", tmp_path / "refused")
    convert(path, export_tokenizer_dir, "test-llama", tmp_path / "trusted", trust_pickle=True)
    converted = torch.load(tmp_path / "trusted" / "lit_model.pth", weights_only=True)
    assert all(torch.equal(converted[k], raw["model"][k]) for k in converted)


def test_lit_export_checks_the_weights_against_lit_config(export_lit_dir, tmp_path):
    from scripts.convert_lit_checkpoint import convert

    lit = tmp_path / "lit"
    lit.mkdir()
    (lit / "tokenizer.model").write_bytes((export_lit_dir / "tokenizer.model").read_bytes())
    (lit / "lit_model.pth").write_bytes((export_lit_dir / "lit_model.pth").read_bytes())
    Config.from_name("micro-llama").to_file(lit / "lit_config.json")  # not the config of these weights
    with pytest.raises(ValueError, match=r"lit_model.pth does not fit 'micro-llama'.*convert the checkpoint again"):
        convert(lit, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
