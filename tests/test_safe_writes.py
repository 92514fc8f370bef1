"""Outputs replaced only when the new one is whole, and writes that the disk refuses said in one line: the real
scripts writing onto real small or read-only file systems (tmpfs mounts, which need root; skipped without)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from prepared_data import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def disk(tmp_path):
    """`disk(size, read_only=False)`: a new tmpfs of `size` bytes mounted under tmp_path, unmounted after the test."""
    mounted = []

    def mount(size: int, read_only: bool = False) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(script: str, *flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / script), *map(str, flags)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(w in line for w in words), proc.stderr[-3000:]
    return line


def test_an_export_that_fills_the_disk_leaves_the_earlier_one_whole(export_lit_dir, tmp_path, disk):
    """convert_lit_checkpoint --overwrite true on a disk with room for one export but not two: the earlier export is
    byte-identical afterwards (it used to be deleted first), no partial folder is left, and the refusal is one line
    naming the folder, the free space and the space needed (given before any work, since 'check_room')."""
    sizing = _run("convert_lit_checkpoint.py", "--checkpoint_dir", export_lit_dir, "--output_dir", tmp_path / "size")
    assert sizing.returncode == 0, sizing.stderr[-3000:]
    size = sum(len(b) for b in _tree(tmp_path / "size").values())
    root = disk(int(size * 1.5))
    out = root / "hf"
    first = _run("convert_lit_checkpoint.py", "--checkpoint_dir", export_lit_dir, "--output_dir", out)
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "README.md").write_text("a model card")
    before = _tree(out)

    again = ["--checkpoint_dir", export_lit_dir, "--output_dir", out, "--overwrite", "true"]
    proc = _run("convert_lit_checkpoint.py", *again)
    # refused before any work (check_room): the earlier export's space is not free for the new one
    line = _one_line_refusal(proc, str(out), "too little space left on its device", "MB free")
    # the export's size: its weights, in the dtype of lit_model.pth
    needed = sum(len(b) for name, b in before.items() if name.endswith(".safetensors"))
    assert f"it needs about {needed / 1e6:.1f} MB" in line or f"it needs about {needed / 1e6 - 0.1:.1f} MB" in line
    assert _tree(out) == before
    assert sorted(p.name for p in root.iterdir()) == ["hf"]  # no staging folder left


def test_an_interrupted_replacement_is_recovered_by_the_next_run(export_lit_dir, tmp_path):
    """A conversion killed between its two renames leaves the earlier output under `.<name>.old-<pid>` and nothing
    under its name: the next run puts it back (and replaces it, with --overwrite true) instead of leaving it hidden;
    one killed after them leaves the old folder beside the new one, which the next run removes."""
    out = tmp_path / "hf"
    args = ["--checkpoint_dir", export_lit_dir, "--output_dir", out]
    assert _run("convert_lit_checkpoint.py", *args).returncode == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    before = _tree(out)
    out.rename(tmp_path / f".hf.old-{pid}")

    proc = _run("convert_lit_checkpoint.py", *args)  # no --overwrite: the restored export is refused, not lost
    assert proc.returncode == 2 and "is not empty" in proc.stderr, proc.stderr[-3000:]
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]

    (tmp_path / f".hf.old-{pid}").mkdir()  # killed after the renames: the old folder beside the new one
    (tmp_path / f".hf.old-{pid}" / "model.safetensors").write_bytes(b"old")
    assert _run("convert_lit_checkpoint.py", *args, "--overwrite", "true").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_conversions_to_a_full_or_read_only_disk_are_one_line(
    fabric_checkpoints,
    export_tokenizer_dir,
    export_lit_dir,
    export_hf_dir,
    register_test_llama,
    disk,
    capsys,
    monkeypatch,
):
    """convert_pretrained_checkpoint (torch's writer: "unexpected pos"), convert_lit_checkpoint (SafetensorError) and
    convert_hf_checkpoint onto a disk too small, and onto a read-only one: one line naming the folder, exit 2; on the
    full disk it gives the free space and the space the output needs (it used to give the free space alone). The two
    run as programs are refused before any work ('check_room'); the one in this process has that check turned off,
    so that the write itself fails on the full disk."""
    import lit_gpt.files
    from lit_gpt.cli import cli

    convert = load_script("convert_pretrained_checkpoint").convert  # in this process: test-llama is registered here
    full, read_only = disk(64 * 1024), disk(1024 * 1024, read_only=True)
    needs = ["it needs about", "MB free"]
    for root, words in ((full, needs), (read_only, ["read-only file system"])):
        flags = ["--checkpoint_file", fabric_checkpoints["single"], "--tokenizer_dir", export_tokenizer_dir]
        flags += ["--config_name", "test-llama", "--output_dir", root / "lit"]
        with monkeypatch.context() as patch, pytest.raises(SystemExit) as exit:
            patch.setattr(lit_gpt.files, "check_room", lambda *args: None)
            cli(convert, list(map(str, flags)))
        err = capsys.readouterr().err
        written = ["no space left on device"] if root == full else []
        _one_line_refusal(
            subprocess.CompletedProcess([], exit.value.code, "", err), str(root / "lit"), *words, *written
        )
        checked = ["too little space left on its device"] if root == full else []
        proc = _run("convert_lit_checkpoint.py", "--checkpoint_dir", export_lit_dir, "--output_dir", root / "hf")
        _one_line_refusal(proc, str(root / "hf"), *words, *checked)
        proc = _run("convert_hf_checkpoint.py", "--checkpoint_dir", export_hf_dir, "--output_dir", root / "lit-hf")
        _one_line_refusal(proc, str(root / "lit-hf"), *words, *checked)
        assert not any(root.iterdir())


def test_preparation_onto_a_full_or_read_only_disk(export_tokenizer_dir, tmp_path, disk):
    """prepare_text.py: a read-only location (mkdtemp's OSError before) and a disk full mid-way (litdata's OSError
    before) end in one line, exit 2; --overwrite true on a disk with room for one output but not two keeps the
    earlier output byte-identical, and nothing else is left there."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(f"word{i % 97} and more text" for i in range(20000)))
    flags = ["--input", corpus, "--tokenizer_path", export_tokenizer_dir]
    sizing = _run("prepare_text.py", *flags, "--output_dir", tmp_path / "size")
    assert sizing.returncode == 0, sizing.stderr[-3000:]
    size = sum(len(b) for b in _tree(tmp_path / "size").values())

    read_only = disk(1024 * 1024, read_only=True)
    proc = _run("prepare_text.py", *flags, "--output_dir", read_only / "out")
    _one_line_refusal(proc, str(read_only / "out"), "read-only file system")

    root = disk(int(size * 1.5))
    assert _run("prepare_text.py", *flags, "--output_dir", root / "out").returncode == 0
    before = _tree(root / "out")
    proc = _run("prepare_text.py", *flags, "--output_dir", root / "out", "--overwrite", "true")
    _one_line_refusal(proc, str(root / "out"), "no space left on device", "MB free")
    assert _tree(root / "out") == before
    assert sorted(p.name for p in root.iterdir()) == ["out"]


def test_a_hugging_face_folder_converted_in_place_is_put_back_after_a_kill(export_hf_dir, tmp_path):
    """convert_hf_checkpoint writes its lit files beside the Hugging Face files by swapping the whole folder in (the
    Hugging Face files hard-linked, not copied): one killed between the renames left the folder as `.<name>.old-<pid>`,
    which the next run puts back before it looks for config.json, and converts."""
    import shutil

    hf = tmp_path / "hf"
    shutil.copytree(export_hf_dir, hf)
    inputs = {k: v for k, v in _tree(hf).items() if k != ".lit_gpt_conversion.json"}  # which gains an entry
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    hf.rename(tmp_path / f".hf.old-{int(dead.stdout)}")
    proc = _run("convert_hf_checkpoint.py", "--checkpoint_dir", hf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _tree(hf)
    assert {k: v for k, v in after.items() if k in inputs} == inputs
    assert {"lit_model.pth", "lit_config.json", "separators.json"} <= set(after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def _convert_in_process(capsys, *flags) -> tuple:
    """(exit code, stderr) of convert_lit_checkpoint.py's command line `flags`, run in this process."""
    from lit_gpt.cli import cli

    convert = load_script("convert_lit_checkpoint").convert
    try:
        cli(convert, list(map(str, flags)))
        code = 0
    except SystemExit as exit:
        code = exit.value.code if hasattr(exit, "value") else exit.code
    return code, capsys.readouterr().err


def test_an_overwrite_needs_room_for_the_new_output_beside_the_earlier_one(
    export_lit_dir, tmp_path, monkeypatch, capsys
):
    """The new export is written whole beside the earlier one, which goes only then: a disk with less free space than
    the new export's size is refused before any work, however much the earlier export takes (it is not freed first).
    The conversion used to start and fail mid-way with a SafetensorError traceback. The free space is faked where the
    code reads it (shutil.disk_usage)."""
    import shutil

    out = tmp_path / "hf"
    assert _convert_in_process(capsys, "--checkpoint_dir", export_lit_dir, "--output_dir", out)[0] == 0
    before = _tree(out)
    size = sum(len(b) for name, b in before.items() if name.endswith(".safetensors"))
    real = shutil.disk_usage
    # half the new export: less than it, more than it with the earlier export counted as freed
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=size // 2))
    code, err = _convert_in_process(
        capsys, "--checkpoint_dir", export_lit_dir, "--output_dir", out, "--overwrite", "true"
    )
    line = _one_line_refusal(subprocess.CompletedProcess([], code, "", err), f"cannot write {str(out)!r}")
    # the export's size (its weights, the safetensors files less their headers) and the free space
    found = re.search(rf"it needs about ([\d.]+) MB, {size // 2 / 1e6:.1f} MB free", line)
    assert found and abs(float(found[1]) - size / 1e6) <= 0.1, line
    assert "Nothing written there before was changed" in line, line
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_full_disk_that_the_writer_names_only_in_its_text_is_one_line(export_lit_dir, tmp_path, monkeypatch, capsys):
    """safetensors deletes its partial file when the disk fills, then raises a SafetensorError without an errno: with
    more than NEARLY_FULL free again afterwards (a large export), that was a traceback. The error's own text ("No
    space left on device (os error 28)", as safetensors words it on a full tmpfs) makes it the one line."""
    from safetensors import SafetensorError

    import lit_gpt.convert

    out = tmp_path / "hf"
    assert _convert_in_process(capsys, "--checkpoint_dir", export_lit_dir, "--output_dir", out)[0] == 0
    before = _tree(out)

    def full_disk(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(lit_gpt.convert, "save_file", full_disk)
    code, err = _convert_in_process(
        capsys, "--checkpoint_dir", export_lit_dir, "--output_dir", out, "--overwrite", "true"
    )
    _one_line_refusal(
        subprocess.CompletedProcess([], code, "", err), str(out), "no space left on device", "it needs about"
    )
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
