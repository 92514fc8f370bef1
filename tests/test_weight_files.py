"""A corrupt or planted weight file, at every entry point that reads one: one `error:` line naming the file, exit
code 2, and no code of a planted pickle run (issue 28, item 7)."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "planted-pickle-ran"


def bad_file(path: Path, kind: str, good: bytes) -> None:
    """Replace `path` with a file of `kind`, made from `good` (the bytes of a whole file of its format)."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "not_a_zip":
        path.write_bytes(b"not a checkpoint \xff\xfe\x80 at all\n" * 10)
    elif kind == "pickled":  # a tensor and a call that would create a file if unpickled
        touch = functools.partial(os.system, f"touch {path.parent / PLANTED}")
        torch.save({"transformer.wte.weight": torch.zeros(2), "hook": touch}, path)
    elif kind == "flipped_byte_digest_stripped":  # read as a file written before digests, until lit_model.pth.sealed
        from test_pretrain import flip_byte, strip_digest

        path.write_bytes(good)
        flip_byte(path)
        strip_digest(path)


def refused(cmd: list, cwd: Path, name: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and str(name) in errors[0], proc.stderr
    assert not (name.parent / PLANTED).exists()


KINDS = ["empty", "truncated", "pickled", "not_a_zip"]
ENTRY_POINTS = ["convert_lit", "generate", "eval", "lora", "full", "initial_checkpoint_dir"]


@pytest.mark.parametrize("kind", [*KINDS, "flipped_byte_digest_stripped"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_bad_lit_model_pth_is_refused_in_one_line_by_every_entry_point(tmp_path, export_lit_dir, kind, entry):
    lit = tmp_path / "lit"
    shutil.copytree(export_lit_dir, lit)
    model_file = lit / "lit_model.pth"
    bad_file(model_file, kind, model_file.read_bytes())
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "index.json").write_text("{}")  # eval reads the model before the data
    records = [{"instruction": f"What is {i}?", "output": str(i)} for i in range(20)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    cpu = ["--accelerator", "cpu", "--precision", "32-true"]
    finetune = ["--checkpoint_dir", lit, "--data", tmp_path / "data.json", "--out_dir", tmp_path / "out", *cpu]
    finetune += ["--max_steps", "1", "--global_batch_size", "2", "--micro_batch_size", "2"]
    from test_pretrain import BLOCK, _build, same_tokens

    cmd = {
        "convert_lit": ["scripts/convert_lit_checkpoint.py", "--checkpoint_dir", lit, "--output_dir", tmp_path / "hf"],
        "generate": ["generate/base.py", "--checkpoint_dir", lit, "--prompt", "def", "--max_new_tokens", "1"],
        "eval": ["eval/perplexity.py", "--checkpoint_dir", lit, "--data_dir", tmp_path / "val"],
        "lora": ["finetune/lora.py", *finetune],
        "full": ["finetune/full.py", *finetune, "--devices", "1"],
        "initial_checkpoint_dir": [
            "pretrain/tinyllama.py", "--initial_checkpoint_dir", lit, "--block_size", str(BLOCK), *cpu,
            "--data_dir", _build(tmp_path / "data", same_tokens, 8), "--out_dir", tmp_path / "out", "--max_steps", "1",
        ],
    }[entry]  # fmt: skip
    refused(cmd, ROOT, model_file)


# a safetensors file holds no pickle to plant
@pytest.mark.parametrize(
    "fmt, kind", [(f, k) for f in ("safetensors", "bin") for k in KINDS if (f, k) != ("safetensors", "pickled")]
)
def test_a_bad_hugging_face_weight_file_is_refused_in_one_line(tmp_path, export_hf_dir, fmt, kind):
    hf = tmp_path / "hf"
    shutil.copytree(export_hf_dir, hf)
    if fmt == "bin":  # the same weights as pytorch_model.bin, which convert_hf_checkpoint reads without safetensors
        from lit_gpt.convert import hf_checkpoint_tensors

        weights = dict(hf_checkpoint_tensors(hf))
        for p in [*hf.glob("*.safetensors"), *hf.glob("*.safetensors.index.json")]:
            p.unlink()
        torch.save(weights, hf / "pytorch_model.bin")
        target = hf / "pytorch_model.bin"
    else:
        target = sorted(hf.glob("*.safetensors"))[-1]
    bad_file(target, kind, target.read_bytes())
    refused(
        ["scripts/convert_hf_checkpoint.py", "--checkpoint_dir", hf, "--output_dir", tmp_path / "lit"], ROOT, target
    )


def test_an_empty_meta_pt_of_a_sharded_checkpoint_is_refused_in_one_line(tmp_path, pretrain_runs, export_tokenizer_dir):
    checkpoint = tmp_path / "step-00000002.pth"
    shutil.copytree(pretrain_runs["two"] / checkpoint.name, checkpoint)
    (checkpoint / "checksums.json").unlink()  # as a checkpoint written before they were recorded
    (checkpoint / "meta.pt").write_bytes(b"")
    cmd = ["scripts/convert_pretrained_checkpoint.py", "--checkpoint_file", checkpoint, "--tokenizer_dir"]
    refused([*cmd, export_tokenizer_dir, "--output_dir", tmp_path / "lit"], ROOT, checkpoint / "meta.pt")


def test_a_sealed_file_cut_short_is_truncated_and_one_stripped_of_its_seal_has_lost_it(tmp_path):
    """A lit_model.pth beside its .sealed mark that was cut short (or overwritten) was said to have "lost the SHA-256
    written with it", as one whose zip comment a tool stripped: the first is truncated or corrupt, only the second
    lost its digest."""
    from test_pretrain import strip_digest

    from lit_gpt.files import CorruptFile, check_seal, seal_zip

    path = tmp_path / "lit_model.pth"
    torch.save({"w": torch.arange(1000.0)}, path)
    seal_zip(path)
    whole = path.read_bytes()
    assert check_seal(path, "lit_model.pth.sealed says it was sealed")
    for broken in (whole[: len(whole) // 2], whole[:-1], whole[:10], b"", b"junk " * 100):
        path.write_bytes(broken)
        assert not check_seal(path)  # a file without a mark is read as it is (and refused by its reader)
        with pytest.raises(CorruptFile, match=r"lit_model.pth is truncated or corrupt: .*\(lit_model.pth.sealed") as e:
            check_seal(path, "lit_model.pth.sealed says it was sealed")
        assert "lost" not in str(e.value)
    path.write_bytes(whole)
    strip_digest(path)
    with pytest.raises(CorruptFile, match=r"lit_model.pth has lost the SHA-256 written with it \(its zip comment"):
        check_seal(path, "lit_model.pth.sealed says it was sealed")
