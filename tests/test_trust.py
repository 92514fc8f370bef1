"""Checkpoints that are broken or from elsewhere: a planted sharded checkpoint runs no code, pickles are unpickled
only when trusted, a broken newest checkpoint is named, and what is written is whole or absent."""

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import BLOCK, COMMON, SCRIPT, _build, _env, same_tokens

from lit_gpt.cli import UserError
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


def test_resume_auto_passes_over_a_broken_newest_checkpoint_naming_it_and_why(tmp_path, capsys):
    """A newest checkpoint cut short (a full disk, a copy cut short), or planted, used to refuse the whole --resume
    auto: it is passed over in one warning naming it and why (none of torch's text on "miniz" or how to save), and the
    newest complete one before it resumes; only where none can be used is it refused. An explicit --resume of the
    broken file stays a refusal (`load_metadata`)."""
    from lit_gpt.training.checkpoint import latest_to_resume, load_metadata

    torch.save({"hparams": {}, "step_count": 2}, tmp_path / "step-00000002.pth")
    torch.save({"hparams": {}, "step_count": 4}, tmp_path / "step-00000004.pth")
    assert latest_to_resume(tmp_path) == tmp_path / "step-00000004.pth"
    assert capsys.readouterr().out == ""
    whole = (tmp_path / "step-00000004.pth").read_bytes()
    (tmp_path / "step-00000004.pth").write_bytes(whole[: len(whole) // 2])  # as a full disk or a copy cut short
    assert latest_to_resume(tmp_path) == tmp_path / "step-00000002.pth"
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and re.fullmatch(
        r"Warning: .*step-00000004.pth cannot be read \(RuntimeError: [^)]*\): it is truncated or corrupt.*; "
        r"step-00000004.pth passed over, resuming from step-00000002.pth, the newest one that is whole",
        said[0],
    ), said
    assert "miniz" not in said[0] and "saved properly" not in said[0], said
    with pytest.raises(ValueError, match=r"step-00000004.pth cannot be read .*truncated or corrupt") as e:
        load_metadata(tmp_path / "step-00000004.pth")  # what an explicit --resume of it says
    assert "miniz" not in str(e.value)

    plant_sharded_checkpoint(tmp_path / "step-00000006.pth", tmp_path / "pwned")  # and one that would run code
    assert latest_to_resume(tmp_path) == tmp_path / "step-00000002.pth"
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and re.search(
        r"step-00000006.pth/.metadata names .*never holds.*step-00000004.pth cannot be read .*; "
        r"step-00000006.pth, step-00000004.pth passed over, resuming from step-00000002.pth",
        said[0],
    ), said
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "step-00000002.pth").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint in .* can be used: .*Move them away .* to start afresh"):
        latest_to_resume(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_or_garbled_metadata_is_corrupt_not_unsafe(tmp_path):
    """A `.metadata` cut short (a full disk, a copy cut short) or overwritten with garbage is reported as truncated or
    corrupt: it is not a pickle that would run code, and --trust_pickle true would not make it readable."""
    import torch.distributed.checkpoint as dcp

    from lit_gpt.trust import read_dcp_metadata

    dcp.save({"model": {"w": torch.zeros(2, 2)}, "optimizer": {"lr": 0.1}}, checkpoint_id=tmp_path, no_dist=True)
    whole = (tmp_path / ".metadata").read_bytes()
    assert "model.w" in read_dcp_metadata(tmp_path / ".metadata").state_dict_metadata
    for broken in (whole[: len(whole) // 2], whole[:-1], b"\x80\x04(((", b"garbage " * 10):
        (tmp_path / ".metadata").write_bytes(broken)
        with pytest.raises(ValueError, match="it is truncated or corrupt") as e:
            read_dcp_metadata(tmp_path / ".metadata")
        assert "--trust_pickle" not in str(e.value)


def test_resume_auto_names_a_sharded_checkpoint_with_a_missing_or_truncated_shard(tmp_path):
    """The newest sharded checkpoint's `.metadata` and `meta.pt` are whole but a shard is cut short or gone (a copy
    cut short): `--resume auto` names the shard and the checkpoint before, instead of an EOFError inside torch."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from lit_gpt.training.checkpoint import latest_to_resume

    first = tmp_path / "step-00000002.pth"
    dcp.save({"model": {"w": torch.zeros(16, 16)}, "optimizer": {"lr": 0.1}}, checkpoint_id=first, no_dist=True)
    torch.save({"hparams": {}}, first / "meta.pt")
    newest = tmp_path / "step-00000004.pth"
    shutil.copytree(first, newest)
    assert latest_to_resume(tmp_path) == newest
    shard = newest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    said = []
    assert latest_to_resume(tmp_path, say=said.append) == first
    assert re.search(r"00004.pth is incomplete: its shard __0_0.distcp is truncated.*resuming from .*00002", said[0])
    shard.unlink()
    for trust_pickle in (False, True):
        said = []
        assert latest_to_resume(tmp_path, trust_pickle, said.append) == first
        assert re.search(r"its shard __0_0.distcp is missing.*passed over, resuming from step-00000002", said[0])


def test_nonfinite_stop_names_a_checkpoint_from_before_the_streak(tmp_path):
    from lit_gpt.training.checkpoint import nonfinite_stop_message

    for step in (2, 4, 6):
        (tmp_path / f"step-{step:08d}.pth").touch()
    # non-finite steps 4 to 7: the step-4 and step-6 checkpoints were saved during the streak
    message = nonfinite_stop_message(tmp_path, streak=4, step=7)
    assert "Stopped at step 7" in message
    assert "step-00000002.pth, the newest checkpoint saved before the streak began at step 4" in message
    assert "step-00000004" not in message and "step-00000006" not in message
    assert "no checkpoint was saved before" in nonfinite_stop_message(tmp_path, streak=6, step=7)


def test_writes_are_whole_or_absent(tmp_path):
    """A write that fails (here on /dev/full, a disk that is always full) leaves neither a truncated file under the
    final name nor its temporary file; a training save that runs out of space says so and removes its `.tmp`."""
    import errno

    from lit_gpt.files import atomic_file
    from lit_gpt.training.checkpoint import save_checkpoint

    target = tmp_path / "lit_model.pth"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.symlink_to("/dev/full")
        torch.save({"w": torch.zeros(1000)}, tmp)
    assert list(tmp_path.iterdir()) == []

    class FullDisk:  # a Fabric whose disk fills up halfway through a save
        global_rank = 0

        def barrier(self):
            pass

        def save(self, path, state):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    # a refusal of one line (exit 2 in a script): the path, the space needed and free, what is kept. The first save
    # of a run has no checkpoint before it to name (it said "the checkpoints saved before are intact", and nothing of
    # the space needed): the size of what it saves
    model = torch.nn.Linear(1000, 500)  # 2,002,000 bytes of weights
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1000)).sum().backward()
    optimizer.step()  # and as much again twice, the moments
    with pytest.raises(UserError) as e:
        save_checkpoint(FullDisk(), tmp_path / "step-00000002.pth", {"model": model, "optimizer": optimizer})
    assert re.fullmatch(
        r"cannot write .*step-00000002.pth.tmp': no space left on device; it needs about 6(\.\d)? MB, [\d,.]+ [MGT]B "
        r"free: .*No checkpoint of this run was saved before \(the partial step-00000002.pth.tmp is removed\): run it "
        r"again",
        str(e.value),
    ), str(e.value)
    assert list(tmp_path.iterdir()) == []
    torch.save({"w": torch.zeros(250_000)}, tmp_path / "step-00000002.pth")  # a checkpoint of about 1 MB before
    with pytest.raises(UserError) as e:
        save_checkpoint(FullDisk(), tmp_path / "step-00000004.pth", {"model": model, "optimizer": optimizer})
    assert re.search(r"it needs about 1(\.\d)? MB, .*The checkpoints saved before are intact", str(e.value)), e.value
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002.pth"]


SAVE_FAILS_ON_RANK_1 = """
import errno
import sys
from pathlib import Path

import torch

sys.path.insert(0, {root!r})
from lit_gpt.training.fabric import L
from lit_gpt.training.checkpoint import save_checkpoint

out = Path(sys.argv[1])
fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
if fabric.global_rank == 1:  # this process' disk is full
    def save(path, state):
        raise OSError(errno.ENOSPC, "No space left on device")
    fabric.save = save
try:
    save_checkpoint(fabric, out / "step-00000004.pth", {{"w": torch.zeros(4)}})
except Exception as e:
    print(f"rank {{fabric.global_rank}}: {{type(e).__name__}}: {{e}}", flush=True)
"""


def test_a_save_that_fails_on_one_process_fails_on_every_one(tmp_path):
    """Rank 1 ran out of space while rank 0's write succeeded: rank 0 went on to the barrier and waited for a process
    that had left (on NCCL until the collective timeout, 30 minutes by default). Now both say what happened, and no
    checkpoint or partial save is left."""
    script = tmp_path / "save.py"
    script.write_text(SAVE_FAILS_ON_RANK_1.format(root=str(ROOT)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert "rank 1: UserError: cannot write" in proc.stdout and "no space left on device" in proc.stdout, (
        proc.stdout + proc.stderr[-3000:]
    )
    assert "rank 0: RuntimeError: Saving " in proc.stdout and "failed on another process" in proc.stdout, proc.stdout
    assert list(out.iterdir()) == []


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


def test_resume_auto_says_once_that_it_passed_over_a_corrupt_checkpoint(tmp_path, monkeypatch, capsys):
    """finetune/full.py and lora.py check `--resume auto` in every process: the note that the newest checkpoint was
    passed over for the one before used to be printed by each of them; rank 0 says it."""
    from test_pretrain import flip_byte

    from lit_gpt.files import seal_zip
    from lit_gpt.training.checkpoint import latest_to_resume

    for step in (2, 4):
        torch.save(
            {"hparams": {}, "step_count": step, "model": {"w": torch.zeros(256)}}, tmp_path / f"step-{step:08d}.pth"
        )
        seal_zip(tmp_path / f"step-{step:08d}.pth")
    flip_byte(tmp_path / "step-00000004.pth")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert latest_to_resume(tmp_path) == tmp_path / "step-00000002.pth"
        said = capsys.readouterr().out
        assert ("step-00000004.pth passed over, resuming from step-00000002.pth" in said) == (rank == "0"), said


SHARDED_SAVE_FAILS_ON_RANK_1 = """
import errno
import sys
from pathlib import Path

import torch

sys.path.insert(0, {root!r})
from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.training.checkpoint import save_checkpoint
from lit_gpt.training.parallel import model_parallel_fabric
from torch.distributed.checkpoint import FileSystemWriter

out = Path(sys.argv[1])
fabric = model_parallel_fabric("cpu", 2, 1, "32-true", 2, "csv", out / "logs", "run")
fabric.launch()
with fabric.init_module(empty_init=False):
    model = GPT(Config(name="t", block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=8, intermediate_size=16))
model = fabric.setup(model)
optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters()))
if fabric.global_rank == 1:  # this process' disk fills up while it writes its shard
    def write_data(self, plan, planner):
        raise OSError(errno.ENOSPC, "No space left on device")
    FileSystemWriter.write_data = write_data
try:
    save_checkpoint(fabric, out / "step-00000004.pth", {{"model": model, "optimizer": optimizer}})
except BaseException as e:
    print(f"rank {{fabric.global_rank}}: {{type(e).__name__}}: {{e}}", flush=True)
"""


def test_a_sharded_save_whose_write_fails_on_one_process_is_one_line_on_each(tmp_path):
    """torch.distributed.checkpoint raises a CheckpointException on every process when one process' write failed (a
    full disk on one node): a BaseException, which the save let through as a traceback of torch's internals on every
    process, leaving the partial .tmp folder. Now the process whose disk is full says so in one line, the other that
    it failed there, and nothing is left."""
    script = tmp_path / "save.py"
    script.write_text(SHARDED_SAVE_FAILS_ON_RANK_1.format(root=str(ROOT)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=180)
    assert "rank 1: UserError: cannot write" in proc.stdout and "no space left on device" in proc.stdout, (
        proc.stdout + proc.stderr[-3000:]
    )
    assert "rank 0: RuntimeError: Saving " in proc.stdout and "failed on another process" in proc.stdout, proc.stdout
    assert [p.name for p in out.iterdir() if p.name != "logs"] == []  # no checkpoint, no partial .tmp
