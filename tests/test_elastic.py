"""Elastic resume: the global order of the training sequences (lit_gpt/data/order.py) is the same for every number of
processes, micro-batch size and loader worker count, and a run resumed on other ones trains on the sequences of the
run that was not interrupted, with its losses."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import SCRIPT, _env, metrics, model_weights

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 16
# three sources of few sequences, so that the one of weight 0.5 ends an epoch within the first steps
SOURCES = {"a": (16, 0.5), "b": (30, 0.3), "c": (20, 0.2)}
GLOBAL = 6  # sequences per optimizer step: 6 on 1 process, 3 on each of 2, 2 on each of 3


def sample(source: int, index: int) -> torch.Tensor:
    """Sequence `index` of source `source`: BLOCK + 1 tokens of its own."""
    tokens = (torch.arange(BLOCK + 1, dtype=torch.int32) * (7 + index) + 3 * source) % 500 + 1000
    tokens[0] = 10 * (source + 1) + index
    return tokens


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> dict:
    """The folders of the three sources (litdata chunks of 4 sequences each) and of a validation split."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    root = tmp_path_factory.mktemp("mix")
    folders = {}
    for source, (name, n) in enumerate({**{k: n for k, (n, _) in SOURCES.items()}, "val": 8}.items()):
        folders[name] = root / name
        folders[name].mkdir()
        writer = BinaryWriter(str(folders[name]), chunk_size=(BLOCK + 1) * 4, item_loader=TokensLoader())
        for i in range(n):
            writer.add_item(i, sample(source, i))
        writer.done()
        writer.merge()
    return folders


def sources(mix: dict) -> list:
    return [(str(mix[name]), weight) for name, (_, weight) in SOURCES.items()]


def steps_read(mix: dict, world_size: int, micro_batch_size: int, num_workers: int, steps: int, state=None):
    """step (0-based from the start or `state`) -> the (source, index, first token) of its global batch, as the
    processes of `world_size` read it (each its slice, in rank order), and the loader's state after `steps`."""
    from lit_gpt.data.order import GlobalBatchLoader

    read, after = {}, None
    for rank in range(world_size):
        loader = GlobalBatchLoader(sources(mix), BLOCK, micro_batch_size, GLOBAL, rank, world_size, num_workers, 9)
        if state is not None:
            loader.load_state_dict(state)
        batches = iter(loader)
        for step in range(steps):
            for _ in range(GLOBAL // world_size // micro_batch_size):
                batch = next(batches)
                assert batch.shape == (micro_batch_size, BLOCK + 1)
                for (source, index), row in zip(loader.last_sequences(), batch):
                    assert torch.equal(row, sample(source, index))  # the sequence read is the one named
                    read.setdefault(step, []).append((source, index))
        after = loader.state_dict() if after is None else after
        assert loader.state_dict() == after  # every process keeps the same position
    return read, after


def test_the_global_order_is_the_same_for_every_world_size_and_resumes_from_its_cursor_on_any(mix):
    whole, state = steps_read(mix, 1, 6, 0, steps=10)
    assert steps_read(mix, 2, 3, 1, steps=4)[0] == {s: whole[s] for s in range(4)}
    # 4 steps on 2 processes, the rest on 3 with two workers each, then on 1: the steps of the run on 1
    _, at4 = steps_read(mix, 2, 1, 1, steps=4)
    assert at4["position"] == 4 * GLOBAL and sum(at4["taken"]) == 4 * GLOBAL
    later, at7 = steps_read(mix, 3, 2, 2, steps=3, state=at4)
    last, end = steps_read(mix, 1, 2, 0, steps=3, state=at7)
    assert [later[s] for s in range(3)] + [last[s] for s in range(3)] == [whole[s] for s in range(4, 10)]
    assert end == state and end["step"] == 10
    # each source's epoch holds each of its sequences once: none skipped, none repeated, also across the epoch end
    taken = [seq for s in range(10) for seq in whole[s]]
    for source, (n, _) in enumerate(SOURCES.values()):
        mine = [index for k, index in taken if k == source]
        for epoch in range(len(mine) // n):
            assert sorted(mine[epoch * n : (epoch + 1) * n]) == list(range(n)), (source, epoch)
        assert len(set(mine[(len(mine) // n) * n :])) == len(mine) % n
    assert len([k for k, _ in taken if k == 0]) > SOURCES["a"][0]  # source a passed its epoch end
    # another seed is another order
    from lit_gpt.data.order import GlobalBatchLoader

    other = GlobalBatchLoader(sources(mix), BLOCK, 6, GLOBAL, 0, 1, 0, 10)
    next(iter(other))
    assert other.step_sequences(1) != [(str(mix[["a", "b", "c"][k]]), i) for k, i in whole[0]]


def test_step_sequences_names_the_global_batch_of_a_recent_step(mix):
    from lit_gpt.data.order import GlobalBatchLoader

    loader = GlobalBatchLoader(sources(mix), BLOCK, 1, GLOBAL, 1, 3, 0, 9)
    batches = iter(loader)
    for _ in range(2 * 2):  # two steps of two micro-batches
        next(batches)
    whole, _ = steps_read(mix, 1, 6, 0, steps=2)
    names = ["a", "b", "c"]
    assert loader.step_sequences(2) == [(str(mix[names[k]]), index) for k, index in whole[1]]
    assert loader.last_sequences() == whole[1][3:4]  # rank 1 of 3 reads positions 2 and 3, one per micro-batch
    with pytest.raises(KeyError, match="step 90 is not among"):
        loader.step_sequences(90)


FLAGS = [
    "--model_name", "micro-llama", "--block_size", str(BLOCK), "--accelerator", "cpu", "--precision", "32-true",
    "--global_batch_size", str(GLOBAL), "--learning_rate", "3e-3", "--min_lr", "3e-4", "--warmup_steps", "1",
    "--logger_name", "csv", "--eval_iters", "1", "--eval_interval", "100", "--save_interval", "2",
    "--max_tokens", str(8 * GLOBAL * BLOCK), "--log_sequences", "true", "--seed", "5",
]  # fmt: skip


def pretrain(mix: dict, out_dir: Path, devices: int, micro_batch_size: int, num_workers: int, *args: str) -> list:
    train = "{" + ", ".join(f"{folder}: {weight}" for folder, weight in sources(mix)) + "}"
    return [sys.executable, str(SCRIPT), *FLAGS, "--train_data", train, "--val_data", str(mix["val"]),
            "--out_dir", str(out_dir), "--devices", str(devices), "--micro_batch_size", str(micro_batch_size),
            "--num_workers", str(num_workers), *args]  # fmt: skip


def run_until(cmd: list, line: str, sig: int) -> tuple:
    """Run `cmd` and send `sig` to all its processes once it prints a line that starts with `line`; the exit code and
    the output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for text in proc.stdout:
            lines.append(text)
            if text.startswith(line):
                os.killpg(proc.pid, sig)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode, "".join(lines)


@pytest.mark.slow  # ~3 min on 2 busy cores: four launches of 1, 2, 3 and 1 processes
def test_a_run_killed_on_two_processes_resumed_on_three_then_on_one_trains_on_the_sequences_of_one_process(
    tmp_path, mix
):
    """8 steps on 1 process; the same run on 2 processes from its single-file step-2 checkpoint, killed with SIGKILL
    during step 6 (its sharded step-4 checkpoint the newest), resumed on 3 processes with other micro-batches and
    loader workers up to step 6 (in which source a ends its first epoch), and on 1 process to the end: every step
    trains on the sequences of the run on 1 process, with its losses."""
    from lit_gpt.data.order import read_sequence_log

    def finish(cmd: list) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout

    whole, elastic = tmp_path / "whole", tmp_path / "elastic"
    finish(pretrain(mix, whole, 1, 6, 1))
    elastic.mkdir()
    shutil.copy(whole / "step-00000002.pth", elastic)
    shutil.copytree(whole / "sequences", elastic / "sequences")  # the sequences of steps 1 and 2
    code, out = run_until(pretrain(mix, elastic, 2, 3, 1, "--resume", "auto"), "step 5/8", signal.SIGKILL)
    assert code == -signal.SIGKILL and "Resumed at step 2" in out, out[-3000:]
    assert sorted(p.name for p in elastic.glob("step-*")) == ["step-00000002.pth", "step-00000004.pth"]
    assert (elastic / "step-00000004.pth").is_dir()  # sharded
    out = finish(pretrain(mix, elastic, 3, 1, 2, "--resume", "auto", "--max_steps", "6"))
    assert "Resumed at step 4" in out
    out = finish(pretrain(mix, elastic, 1, 2, 0, "--resume", "auto"))
    assert "Resumed at step 6" in out and "Done: 8 steps" in out

    expected, actual = read_sequence_log(whole), read_sequence_log(elastic)
    assert sorted(expected) == list(range(1, 9))
    assert actual == expected  # sources, indices and token digests of every step
    taken = [k for step in expected.values() for k, _, _ in step]
    # source a's first epoch ends in step 6, which the run on 3 processes trains
    assert taken[: 5 * GLOBAL].count(0) < SOURCES["a"][0] < taken[: 6 * GLOBAL].count(0)
    assert len(set(taken)) == 3
    losses, resumed = metrics(whole), metrics(elastic)
    assert sorted(resumed) == list(range(3, 9))
    for step in resumed:
        assert resumed[step] == pytest.approx(losses[step], rel=1e-4), (step, resumed[step], losses[step])
    final, final_elastic = model_weights(whole / "step-00000008.pth"), model_weights(elastic / "step-00000008.pth")
    # the same up to reduction order, which AdamW amplifies in an embedding row of a token seen rarely (its small
    # gradient is divided by the root of its smaller second moment): below one step of the peak learning rate there
    for name in final:
        difference = (final_elastic[name] - final[name]).abs()
        assert difference.max() < 1e-3 and difference.mean() < 1e-6, (name, difference.max(), difference.mean())


def test_a_checkpoint_of_the_global_order_resumes_on_other_processes_but_not_with_another_seed(tmp_path):
    from lit_gpt.config import Config
    from lit_gpt.data.order import ORDER
    from lit_gpt.training.checkpoint import check_compatible

    config = Config.from_name("micro-llama").to_dict()
    then = {
        "model_config": config,
        "world_size": 2,
        "micro_batch_size": 4,
        "num_workers": 2,
        "seed": 3,
        "data_order": ORDER,
    }
    now = {**then, "world_size": 3, "micro_batch_size": 1, "num_workers": 0}
    check_compatible(tmp_path, {"hparams": then}, config, world_size=3, run_hparams=now)
    with pytest.raises(ValueError, match="written with --seed 3, this run has --seed 4.*Resume with --seed 3$"):
        check_compatible(tmp_path, {"hparams": then}, config, world_size=3, run_hparams={**now, "seed": 4})
    with pytest.raises(ValueError, match="order 'global-v0', which this version.*resume it with the version"):
        check_compatible(tmp_path, {"hparams": {**then, "data_order": "global-v0"}}, config, world_size=2)
    # written before the global order: its own number of processes only, saying why
    old = {k: v for k, v in then.items() if k != "data_order"}
    with pytest.raises(ValueError, match="written by 2 processes, this run has 3. It was saved before elastic resume"):
        check_compatible(tmp_path, {"hparams": old}, config, world_size=3, run_hparams=now)
    with pytest.raises(ValueError, match="resume with --micro_batch_size 4 --num_workers 2"):
        check_compatible(tmp_path, {"hparams": old}, config, world_size=2, run_hparams={**now, "world_size": 2})


def test_a_checkpoint_written_before_the_global_order_resumes_with_its_litdata_position(tmp_path, pretrain_runs):
    """A single-file checkpoint as the version before this one wrote it (litdata's loader position, no data order in
    its settings) resumes on its own number of processes with litdata's loader and keeps writing such checkpoints."""
    from test_pretrain import BLOCK as PRETRAIN_BLOCK
    from test_pretrain import COMMON, SHARDED_FLAGS

    from lit_gpt.data.loaders import cycle_full_batches, data_sources, mixture_dataloader

    ckpt = torch.load(pretrain_runs["one"] / "step-00000002.pth", weights_only=True)
    del ckpt["hparams"]["data_order"]
    ckpt["hparams"].pop("checkpoint_digests", None)  # and from before the digests were recorded
    sources = data_sources(str(pretrain_runs["data"]), (0.693584, 0.306416))[0]
    loader = mixture_dataloader(sources, PRETRAIN_BLOCK, 2, 1, 3407)  # COMMON's settings
    batches = cycle_full_batches(loader, 2)
    for _ in range(2 * 4):  # two steps of 4 micro-batches
        next(batches)
    ckpt["train_dataloader"] = loader.state_dict()
    torch.save(ckpt, tmp_path / "step-00000002.pth")  # without a digest, as before digests were recorded

    cmd = [sys.executable, str(SCRIPT), *COMMON, *SHARDED_FLAGS, "--data_dir", str(pretrain_runs["data"])]
    cmd += ["--out_dir", str(tmp_path), "--devices", "1", "--resume", "auto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Resumed at step 2" in proc.stdout and "Done: 3 steps" in proc.stdout
    # every sample of this data is the same: the loss of step 3 is the uninterrupted run's
    assert metrics(tmp_path)[3] == metrics(pretrain_runs["one"])[3]
    saved = torch.load(tmp_path / "step-00000003.pth", weights_only=True)
    assert "data_order" not in saved["hparams"] and "order" not in saved["train_dataloader"]
