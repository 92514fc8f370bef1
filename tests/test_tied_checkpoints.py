"""Training checkpoints of a tied shape (the output head is the token embedding, one weight: Llama 3.2, SmolLM2, Qwen)
store the shared weight and its optimizer state once: a single file (one process) and a sharded directory (FSDP2 on
2 gloo processes), written synchronously or in the background. They resume bit-identically after SIGKILL, on another
number of processes, and so do sharded checkpoints written before (the weight under both names); the converter reads
them and refuses a head that differs from the embedding."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from test_pretrain import _build, _env, metrics, model_weights, same_tokens
from test_shapes import pretrain_command, write_reduced_config_json

from lit_gpt.hf import read_model_config
from lit_gpt.model import GPT

# 4 steps, checkpoints of steps 2 and 4
FLAGS = ["--max_steps", "4", "--save_interval", "2", "--eval_interval", "100", "--max_tokens", str(4 * 8 * 32)]
RUNS = {"one": (1, "false"), "one_background": (1, "true"), "two": (2, "false"), "two_background": (2, "true")}


def command(out_dir: Path, runs: dict, devices: int, *flags: str) -> list:
    cmd = pretrain_command(out_dir, runs["data"], runs["config"], *FLAGS, *flags)
    cmd[cmd.index("--devices") + 1] = str(devices)
    return cmd


def run(cmd: list) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def tied_runs(tmp_path_factory) -> dict:
    """Llama 3.2's reduced shape (tied head) pretrained for 4 steps on 1 and on 2 processes, saving synchronously and
    in the background (`--async_save`): the out dir of each, by the name of RUNS."""
    root = tmp_path_factory.mktemp("tied")
    runs = {"data": _build(root / "data", same_tokens, 24), "root": root}
    runs["config"] = write_reduced_config_json("Llama-3.2-1B", root / "llama")
    assert read_model_config(runs["config"]).tie_embeddings
    started = {}
    for name, (devices, background) in RUNS.items():  # the runs of one process beside those of two
        cmd = command(root / name, runs, devices, "--async_save", background)
        if devices == 1:
            started[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        else:
            run(cmd)
        runs[name] = root / name
    for proc in started.values():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return runs


def stored_bytes(path: Path) -> dict:
    """The bytes that the checkpoint `path` stores of the model weights, the optimizer's moments (exp_avg and
    exp_avg_sq) and the optimizer's other tensors (its step counts): a tensor stored twice counts twice."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    found = {"model": 0, "moments": 0, "optimizer": 0}

    def kind(key: str) -> str:
        if key.startswith("model."):
            return "model"
        return "moments" if key.endswith((".exp_avg", ".exp_avg_sq")) else "optimizer"

    if path.is_dir():  # one copy per key in the shards: torch.distributed.checkpoint stores each key apart
        metadata = FileSystemReader(path).read_metadata().state_dict_metadata
        for key, meta in metadata.items():
            if isinstance(meta, TensorStorageMetadata):
                found[kind(key)] += meta.size.numel() * meta.properties.dtype.itemsize
        return found
    checkpoint = torch.load(path, mmap=True, weights_only=True)  # torch.save writes each storage once
    seen = set()
    tensors = [(f"model.{k}", v) for k, v in checkpoint["model"].items()]
    tensors += [(f"optimizer.{k}", v) for s in checkpoint["optimizer"]["state"].values() for k, v in s.items()]
    for key, tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            found[kind(key)] += storage.nbytes()
    return found


def one_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` and `b` are one tensor (as read back: one storage, the same view of it)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.shape == b.shape and torch.equal(a, b)


def test_a_tied_checkpoint_stores_the_shared_weight_and_its_optimizer_state_once(tied_runs):
    """Every layout stores each parameter once, and AdamW's two moments of each once: the bytes of the model's
    parameters (which counts the tied one once) and twice that. The sharded checkpoints, and the single file written
    in the background, stored the embedding a second time as lm_head.weight (the optimizer's state is keyed by one
    name per parameter: it was stored once)."""
    config = read_model_config(tied_runs["config"])
    model = GPT(config)
    parameters = list(model.parameters())  # the tied weight once
    weights = sum(p.numel() * 4 for p in parameters)  # float32 (--precision 32-true)
    once = {"model": weights, "moments": 2 * weights, "optimizer": 4 * len(parameters)}  # a float32 step count each
    stored = {name: stored_bytes(tied_runs[name] / "step-00000004.pth") for name in RUNS}
    assert stored == {name: once for name in RUNS}
    for name, (devices, _) in RUNS.items():
        path = tied_runs[name] / "step-00000004.pth"
        assert path.is_dir() == (devices == 2), name
        # read back under both names, as one tensor: the lit checkpoint writes it once
        read = model_weights(path)
        assert read.keys() == model.state_dict().keys()
        assert one_tensor(read["lm_head.weight"], read["transformer.wte.weight"]), name
    for one, two in (("one", "two"), ("one_background", "two_background")):
        assert metrics(tied_runs[two]) == pytest.approx(metrics(tied_runs[one]), rel=1e-4)
    assert metrics(tied_runs["one_background"]) == metrics(tied_runs["one"])


def as_written_before(new: Path, old: Path, head_offset: float = 0.0) -> None:
    """The sharded checkpoint `new`, as a version that stored the tied head twice wrote it: the embedding's weight
    under lm_head.weight too (plus `head_offset`: a head trained apart), meta.pt without the record of the names
    stored once, and the digests of these files."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

    from lit_gpt.files import write_checksums
    from lit_gpt.trust import load_single_file

    whole = old.with_name(old.name + ".whole")
    dcp_to_torch_save(new, whole)
    state = torch.load(whole, weights_only=True)
    assert "lm_head.weight" not in state["model"]
    state["model"]["lm_head.weight"] = state["model"]["transformer.wte.weight"] + head_offset
    torch.save(state, whole)
    torch_save_to_dcp(whole, old)
    whole.unlink()
    meta = load_single_file(new / "meta.pt")
    meta.pop("tied_weights", None)
    torch.save(meta, old / "meta.pt")
    write_checksums(old)


def test_a_tied_checkpoint_resumes_bit_identically_after_sigkill_on_another_number_of_processes_and_as_before(
    tmp_path, tied_runs
):
    """The run on 2 processes killed with SIGKILL after its step-2 checkpoint and resumed ends with the weights of the
    run that was not killed, bit for bit; its step-2 checkpoint resumed on 1 process ends as the run on 1 process did
    (up to reduction order), the head still the embedding, and the 1-process step 2 resumed on 2 processes as the run
    on 2 did; the step-2 checkpoint as the version before wrote it (the weight twice) resumes on 2 processes to the
    same bits, its next checkpoint storing the weight once."""
    two = tied_runs["two"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, tied_runs, 2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), start_new_session=True)  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("step 3/4"):  # after the step-2 checkpoint, before the end
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-00000002.pth"]
    assert "Resumed at step 2" in run(command(killed, tied_runs, 2, "--resume", "auto"))
    final = model_weights(two / "step-00000004.pth")
    resumed = model_weights(killed / "step-00000004.pth")
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)
    assert all(metrics(killed)[step] == metrics(two)[step] for step in (3, 4))

    # elastic: the sharded step 2 resumed on 1 process, whose step-4 checkpoint is a single file
    elastic = tmp_path / "elastic"
    elastic.mkdir()
    shutil.copytree(two / "step-00000002.pth", elastic / "step-00000002.pth")
    assert "Resumed at step 2" in run(command(elastic, tied_runs, 1, "--resume", "auto"))
    one, weights = metrics(tied_runs["one"]), model_weights(elastic / "step-00000004.pth")
    assert all(metrics(elastic)[step] == pytest.approx(one[step], rel=1e-4) for step in (3, 4))
    assert one_tensor(weights["lm_head.weight"], weights["transformer.wte.weight"])
    for name, tensor in model_weights(tied_runs["one"] / "step-00000004.pth").items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5)

    # and the other way: the single file of step 2 resumed on 2 processes, whose step-4 checkpoint is sharded
    grown = tmp_path / "grown"
    grown.mkdir()
    shutil.copy(tied_runs["one"] / "step-00000002.pth", grown)
    assert "Resumed at step 2" in run(command(grown, tied_runs, 2, "--resume", "auto"))
    assert all(metrics(grown)[step] == pytest.approx(metrics(two)[step], rel=1e-4) for step in (3, 4))
    assert stored_bytes(grown / "step-00000004.pth") == stored_bytes(two / "step-00000004.pth")
    weights = model_weights(grown / "step-00000004.pth")
    for name, tensor in final.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5)

    # a checkpoint of the version before: the weight under both names
    before = tmp_path / "before"
    before.mkdir()
    as_written_before(two / "step-00000002.pth", before / "step-00000002.pth")
    assert stored_bytes(before / "step-00000002.pth")["model"] > stored_bytes(two / "step-00000002.pth")["model"]
    assert "Resumed at step 2" in run(command(before, tied_runs, 2, "--resume", "auto"))
    again = model_weights(before / "step-00000004.pth")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    assert stored_bytes(before / "step-00000004.pth") == stored_bytes(two / "step-00000004.pth")


def test_convert_pretrained_checkpoint_reads_a_head_stored_once_and_refuses_one_that_differs(
    tmp_path, tied_runs, export_tokenizer_dir
):
    from prepared_data import load_script

    convert = load_script("convert_pretrained_checkpoint").convert
    sharded = tied_runs["two"] / "step-00000004.pth"
    convert(sharded, export_tokenizer_dir, output_dir=tmp_path / "lit")
    lit = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    head, embedding = lit["lm_head.weight"], lit["transformer.wte.weight"]
    assert one_tensor(head, embedding)
    assert torch.equal(embedding, model_weights(sharded)["transformer.wte.weight"])
    model = GPT(read_model_config(tied_runs["config"]))
    model.load_state_dict(lit, strict=True)

    # written before, with a head that differs from the embedding (trained apart while the tie was lost): refused
    apart = tmp_path / "apart" / "step-00000004.pth"
    apart.parent.mkdir()
    as_written_before(sharded, apart, head_offset=1.0)
    with pytest.raises(ValueError, match="lm_head.weight and transformer.wte.weight differ"):
        convert(apart, export_tokenizer_dir, output_dir=tmp_path / "refused")
    assert not (tmp_path / "refused" / "lit_model.pth").exists()


def with_tied_record(src: Path, dst: Path, record) -> None:
    """A copy of the sharded checkpoint `src` at `dst` whose meta.pt records `record` as the names stored once, with
    the digests of its files (as a tool or a hand that rewrote the record would leave it)."""
    from lit_gpt.files import write_checksums
    from lit_gpt.trust import load_single_file

    shutil.copytree(src, dst)
    meta = load_single_file(src / "meta.pt")
    meta["tied_weights"] = record
    (dst / "meta.pt").unlink()
    torch.save(meta, dst / "meta.pt")
    write_checksums(dst)


def test_a_record_of_weights_stored_once_that_is_not_the_models_is_refused_in_one_line(
    tmp_path, tied_runs, export_tokenizer_dir
):
    """meta.pt's "tied_weights" that is not a mapping of names, names a weight the checkpoint does not hold, or ties
    a weight that the model does not tie (the final norm loaded into the first block's, silently) is refused on
    resume and by the converter, in one line each; nothing is trained or written."""
    from prepared_data import load_script

    convert = load_script("convert_pretrained_checkpoint").convert
    src = tied_runs["two"] / "step-00000002.pth"
    own = {"lm_head.weight": "transformer.wte.weight"}
    records = {
        "a_list": ["lm_head.weight"],
        "not_held": {"lm_head.weight": "transformer.nowhere.weight"},
        "not_tied": {**own, "transformer.h.0.norm_1.weight": "transformer.ln_f.weight"},
    }
    for name, record in records.items():
        out = tmp_path / name
        with_tied_record(src, out / src.name, record)
        proc = subprocess.run(command(out, tied_runs, 1, "--resume", "auto"), capture_output=True, text=True,
                              timeout=300, env=_env())  # fmt: skip
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr[-3000:]
        assert "tied_weights" in proc.stderr and not (out / "step-00000004.pth").exists()
        if name != "not_tied":  # the converter reads each weight under its own name, whatever the record adds
            with pytest.raises(ValueError, match="tied_weights"):
                convert(out / src.name, export_tokenizer_dir, output_dir=tmp_path / f"lit-{name}")


def test_a_sharded_checkpoint_whose_meta_pt_lacks_an_entry_is_refused_in_one_line(tmp_path, tied_runs):
    """meta.pt without the step count (rewritten by hand or another tool, digests and all) is refused on resume in
    one line naming what it lacks, before any weight is loaded, not with a KeyError's traceback."""
    from lit_gpt.files import write_checksums
    from lit_gpt.trust import load_single_file

    src = tied_runs["two"] / "step-00000002.pth"
    dst = tmp_path / "lacks" / src.name
    shutil.copytree(src, dst)
    meta = load_single_file(src / "meta.pt")
    del meta["step_count"]
    (dst / "meta.pt").unlink()
    torch.save(meta, dst / "meta.pt")
    write_checksums(dst)
    proc = subprocess.run(command(dst.parent, tied_runs, 1, "--resume", "auto"), capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "step_count" in last, proc.stderr[-3000:]
