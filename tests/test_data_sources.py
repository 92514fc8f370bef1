"""Pretraining on any number of prepared sources (`--train_data`, `--val_data`; `lit_gpt.data.loaders.data_sources`):
the flags' forms and refusals, the sampled share of each source, and a real run on three sources killed and resumed
bit-identically, which refuses a resume on another mix."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from test_pretrain import BLOCK, COMMON, SCRIPT, _env, _write_chunks, metrics, model_weights, run, run_until_signal

from lit_gpt.data.loaders import data_sources, mixture_dataloader


def test_sources_from_the_default_a_mapping_or_a_yaml_file(tmp_path):
    default, val = data_sources("data", (0.7, 0.3))
    assert default == [("data/slimpajama/train", 0.7), ("data/starcoder", 0.3)] and val == "data/slimpajama/val"
    mix = {"data/a/": 2, "./data/b": 1, "s3://bucket/c/": 0.5}
    sources, val = data_sources("data", (0.7, 0.3), mix, "data/v/")
    assert sources == [("data/a", 2.0), ("data/b", 1.0), ("s3://bucket/c", 0.5)] and val == "data/v"
    (tmp_path / "mix.yaml").write_text("data/a: 0.6\ndata/b: 0.4\n")
    assert data_sources("data", (0.7, 0.3), str(tmp_path / "mix.yaml"))[0] == [("data/a", 0.6), ("data/b", 0.4)]

    with pytest.raises(FileNotFoundError, match=r"--train_data .*nope.yaml: no such file"):
        data_sources("data", (0.7, 0.3), str(tmp_path / "nope.yaml"))
    # folders meant as the data: not named a missing file
    (tmp_path / "a").mkdir()
    for given, what in [("data/a,data/b", "several folders, not a file"), (str(tmp_path / "a"), "a prepared folder")]:
        with pytest.raises(FileNotFoundError, match=f"--train_data '{given}' reads as {what}; it takes a mapping") as e:
            data_sources("data", (0.7, 0.3), given)
        assert "no such file" not in str(e.value) and "in braces" in str(e.value)
    # values that are not paths, as the command line gives them when it cannot read them as a mapping of weights
    for given, match in [
        ("{data/a: nan}", r"--train_data: the weight of data/a is 'nan'; weights are non-negative numbers"),
        ("{data/a: heavy, data/b: 1}", r"--train_data: the weight of data/a is 'heavy'"),
        ("[data/a, data/b]", r"--train_data '\[data/a, data/b\]' is not a path: it reads as a list \(data/a, data/b\)"),
        ("0.5", r"--train_data '0.5' is not a path: it reads as a number. It takes a mapping .* in braces"),
        ("true", r"--train_data 'true' is not a path: it reads as a truth value"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            data_sources("data", (0.7, 0.3), given)
        assert "no such file" not in str(e.value)
    (tmp_path / "list.yaml").write_text("- data/a\n- data/b\n")
    with pytest.raises(ValueError, match="must hold a mapping of prepared folders to weights"):
        data_sources("data", (0.7, 0.3), str(tmp_path / "list.yaml"))
    for bad, match in [
        ({"data/a": -1}, "the weight of data/a is -1"),
        ({"data/a": "heavy"}, "the weight of data/a is 'heavy'"),
        ({"data/a": 0}, "at least one prepared folder with a positive weight"),
        ({}, "at least one prepared folder"),
        ({"data/a": 1, "data/a/": 1}, "names data/a/ twice"),
        ({"data/a": float("inf"), "data/b": 1}, "the weight of data/a is inf"),  # its share would be nan
        ({"data/a": 1, os.path.abspath("data/a"): 1}, f"names {os.path.abspath('data/a')} twice \\(as data/a\\)"),
        ({"data/a": 1, "data/c/../a": 1}, "names data/c/../a twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            data_sources("data", (0.7, 0.3), bad)
    with pytest.raises(ValueError, match="--data_weights .* two non-negative weights"):
        data_sources("data", (0.7, 0.2, 0.1))


def test_each_source_is_sampled_by_its_weight(tmp_path):
    # three sources whose tokens name them: every item of source i is i + 1 throughout
    weights = [0.5, 0.3, 0.2]
    sources = []
    for i, w in enumerate(weights):
        _write_chunks(lambda _, i=i: torch.full((BLOCK + 1,), i + 1, dtype=torch.int32), 400, tmp_path / f"s{i}")
        sources.append((str(tmp_path / f"s{i}"), w))
    loader = mixture_dataloader(sources, BLOCK, batch_size=8, num_workers=1, seed=3)
    counts, rows = [0, 0, 0], 0
    for batch in loader:
        for row in batch:
            counts[int(row[0]) - 1] += 1
        rows += batch.size(0)
        if rows >= 800:
            break
    shares = [c / rows for c in counts]
    assert all(abs(s - w) < 0.05 for s, w in zip(shares, weights)), shares


def test_three_sources_resume_bit_identically_after_a_kill_and_refuse_another_mix(tmp_path, data_dir):
    mix = {str(data_dir / "slimpajama/train"): 0.5, str(data_dir / "starcoder"): 0.3,
           str(data_dir / "slimpajama/val"): 0.2}  # fmt: skip
    spec = "{" + ", ".join(f"{k}: {v}" for k, v in mix.items()) + "}"
    flags = ["--train_data", spec, "--val_data", str(data_dir / "slimpajama/val"), "--max_steps", "6"]
    flags += ["--save_interval", "3", "--eval_interval", "3"]
    full = tmp_path / "full"
    run(full, tmp_path / "no-data-dir", *flags)  # --data_dir is not read when the sources are named
    losses = metrics(full)
    assert sorted(losses) == list(range(1, 7))

    killed = tmp_path / "killed"
    code, _ = run_until_signal(killed, tmp_path, "step 4/6", signal.SIGKILL, *flags)
    assert code == -signal.SIGKILL
    assert (killed / "step-00000003.pth").exists() and not (killed / "step-00000006.pth").exists()
    assert "Resumed at step 3" in run(killed, tmp_path, *flags, "--resume", "auto").stdout
    resumed = metrics(killed)
    assert all(resumed[step] == losses[step] for step in (4, 5, 6)), (resumed, losses)
    final, again = model_weights(full / "step-00000006.pth"), model_weights(killed / "step-00000006.pth")
    assert all(torch.equal(final[k], again[k]) for k in final)

    # another weight for one source: refused before a step, naming the checkpoint's mix
    changed = spec.replace(": 0.2}", ": 0.4}")
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(tmp_path), "--out_dir", str(killed), *flags]
    cmd[cmd.index(spec)] = changed
    proc = subprocess.run([*cmd, "--resume", "auto", "--max_steps", "8"], capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode != 0 and "was trained on {" in proc.stderr and "slimpajama/val: 0.2}" in proc.stderr, (
        proc.stderr[-2000:]
    )
    assert not (killed / "step-00000008.pth").exists()


def test_a_missing_or_unprepared_source_is_refused_naming_the_command_that_prepares_it(tmp_path, data_dir, capsys):
    from test_cli import refusal
    from test_pretrain import load_script

    setup = load_script().setup  # in-process, through the script's own `cli(setup)`: a Python start costs ~10 s here
    (tmp_path / "corpus").mkdir()  # a folder of text, not yet prepared
    (tmp_path / "corpus" / "notes.txt").write_text("some text\n")
    for folder, problem in [
        (tmp_path / "typo", "does not exist"),
        (tmp_path / "corpus", "holds no prepared litdata chunks (no index.json)"),
        # prepare_text.py --val_fraction's output folder, given whole
        (data_dir / "slimpajama", "holds no prepared litdata chunks (no index.json); its sub-folders train, val do"),
    ]:
        flags = ["--train_data", f"{{{data_dir / 'starcoder'}: 1, {folder}: 1}}", "--max_steps", "2"]
        args = [*COMMON, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "out"), *flags]
        line = refusal(capsys, setup, *args)
        assert f"--train_data: {folder} {problem}" in line
        assert f"`python scripts/prepare_text.py --input <your files> --output_dir {folder} --tokenizer_path" in line
        assert not (tmp_path / "out").exists()


def test_a_source_without_a_whole_block_is_refused_not_left_out_of_the_mix(tmp_path):
    """A prepared folder with fewer tokens than one block yields no sequence: the run trained on the other sources
    alone, its weight silently theirs."""
    _write_chunks(lambda _: torch.ones(BLOCK + 1, dtype=torch.int32), 40, tmp_path / "big")
    _write_chunks(lambda _: torch.ones(10, dtype=torch.int32), 3, tmp_path / "tiny")  # 30 tokens: no block of 33
    sources = [(str(tmp_path / "big"), 0.5), (str(tmp_path / "tiny"), 0.5)]
    with pytest.raises(ValueError, match=f"--train_data: {tmp_path / 'tiny'} holds no block of {BLOCK + 1} tokens"):
        mixture_dataloader(sources, BLOCK, batch_size=2, num_workers=1, seed=3)
    mixture_dataloader([*sources[:1], (sources[1][0], 0)], BLOCK, batch_size=2, num_workers=1, seed=3)  # weight 0
