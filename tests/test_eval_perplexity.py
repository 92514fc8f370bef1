"""Perplexity over real litdata chunks, checked against transformers' loss on the same blocks."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _documents(path):
    yield torch.load(path)


def write_split(tokens: torch.Tensor, output_dir, tmp_path):
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    torch.save(tokens, tmp_path / "tokens.pt")
    # one input and one worker: the stream is written in order, as one document
    optimize(
        fn=_documents,
        inputs=[str(tmp_path / "tokens.pt")],
        output_dir=str(output_dir),
        chunk_size=1000,
        item_loader=TokensLoader(),
        num_workers=1,
    )


def test_perplexity_is_deterministic_and_matches_transformers(export_lit_dir, export_hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from eval.perplexity import main

    block_size, num_blocks = 32, 5
    tokens = torch.randint(3, 512, (3000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    write_split(tokens, tmp_path / "val", tmp_path)

    first = main(
        export_lit_dir,
        tmp_path / "val",
        num_blocks=num_blocks,
        block_size=block_size,
        batch_size=2,
        out_file=tmp_path / "ppl.json",
    )
    second = main(export_lit_dir, tmp_path / "val", num_blocks=num_blocks, block_size=block_size, batch_size=2)
    assert first["loss"] == second["loss"]  # bit for bit, run to run
    other_batching = main(export_lit_dir, tmp_path / "val", num_blocks=num_blocks, block_size=block_size, batch_size=3)
    assert abs(other_batching["loss"] - first["loss"]) < 1e-5  # the same blocks, batched differently
    assert first["num_blocks"] == num_blocks and first["tokens"] == num_blocks * block_size
    # what the number depends on, recorded with it
    saved = json.loads((tmp_path / "ppl.json").read_text())
    assert saved["precision"] == "32-true" and saved["batch_size"] == 2 and saved["loss"] == first["loss"]

    theirs = AutoModelForCausalLM.from_pretrained(export_hf_dir).eval()
    blocks = tokens[: num_blocks * (block_size + 1)].view(num_blocks, block_size + 1).long()
    with torch.no_grad():
        logits = theirs(blocks[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert abs(first["loss"] - expected) < 1e-5
    assert first["perplexity"] == math.exp(first["loss"])


def test_perplexity_refuses_no_blocks(tmp_path):
    from eval.perplexity import main

    with pytest.raises(ValueError, match="--num_blocks \\(0\\) and --batch_size \\(4\\) must be at least 1"):
        main(tmp_path, tmp_path, num_blocks=0)


def test_a_missing_data_dir_is_named_with_the_command_that_prepares_it(export_lit_dir, tmp_path):
    """`--data_dir data/slimpajama/test` (a folder that does not exist) used to be called "not a prepared litdata split
    (no index.json)", with the command that prepares the validation split."""
    from eval.perplexity import main

    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "perplexity.py"), "--checkpoint_dir", str(export_lit_dir), "--data_dir",
         "data/slimpajama/test"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr == (
        "error: --data_dir 'data/slimpajama/test' does not exist; prepare it with `python "
        "scripts/prepare_slimpajama.py --input_dir data/slimpajama-raw/test --output_dir data/slimpajama/test "
        f"--tokenizer_path {export_lit_dir}`\n"
    )
    # the validation split is prepared from slimpajama-raw/validation; other folders from your own files
    with pytest.raises(FileNotFoundError, match=r"slimpajama/val' does not exist; prepare it with `python scripts/"
                       r"prepare_slimpajama.py --input_dir out/slimpajama-raw/validation --output_dir "):  # fmt: skip
        main(export_lit_dir, Path("out/slimpajama/val"))
    with pytest.raises(FileNotFoundError, match=rf"--data_dir 'mine' does not exist; prepare it with `python scripts/"
                       rf"prepare_text.py --input <your text files> --output_dir mine --tokenizer_path "
                       rf"{export_lit_dir}`"):  # fmt: skip
        main(export_lit_dir, Path("mine"))
    # a folder that is there
    with pytest.raises(FileNotFoundError, match=rf"--data_dir '{tmp_path}' is not a prepared litdata split \(no "
                       rf"index.json\); prepare it with `python scripts/prepare_text.py"):  # fmt: skip
        main(export_lit_dir, tmp_path)


def test_data_with_ids_beyond_the_model_vocabulary_is_refused_before_evaluating(export_lit_dir, prepared, tmp_path):
    """Data prepared with a tokenizer of 1,024 ids, evaluated with a model of 512: an IndexError traceback in the
    forward pass before; now one line naming the folder, the id and the model's vocabulary."""
    data_dir = prepared["slimpajama_val"]
    top = json.loads((data_dir / "prepare.json").read_text())["max_token_id"]
    assert top >= 512
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "perplexity.py"), "--checkpoint_dir", str(export_lit_dir), "--data_dir",
         str(data_dir), "--num_blocks", "1", "--block_size", "16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == (
        f"error: {data_dir} holds token id {top} (prepare.json), but the model in {export_lit_dir} has embeddings for "
        "512 ids (its padded_vocab_size): the data was tokenized with a tokenizer of a larger vocabulary. Prepare it "
        "with the model's tokenizer, or use a model whose vocabulary holds the tokenizer's\n"
    )


def test_an_id_beyond_the_vocabulary_in_a_later_chunk_of_a_folder_without_a_record_is_refused(export_lit_dir, tmp_path):
    """A folder without prepare.json (prepared before it recorded the largest id) has only its first chunk read up
    front: an id the model has no embedding for in a later chunk ended in an IndexError traceback. Each batch read is
    checked on the host: one line naming the folder, the id and how to prepare it again."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    from eval.perplexity import main

    tokens = torch.randint(3, 512, (3000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    tokens[2500] = 700  # the third chunk of 1,000 tokens; the model (and the first chunk) know 512 ids
    writer = BinaryWriter(str(tmp_path / "val"), chunk_size=1000, item_loader=TokensLoader())
    for i, document in enumerate(tokens.split(1000)):
        writer.add_item(i, document.clone())
    writer.done()
    writer.merge()
    assert len(list((tmp_path / "val").glob("*.bin"))) == 3 and not (tmp_path / "val" / "prepare.json").exists()
    assert main(export_lit_dir, tmp_path / "val", num_blocks=100, block_size=16)["num_blocks"] == 100  # before it
    with pytest.raises(
        ValueError,
        match=rf"^a batch holds token id 700, but the model in {export_lit_dir} has embeddings for 512 ids \(0 to "
        rf"511\): it comes from {tmp_path / 'val'}, whose largest id no prepare.json records .*Prepare it again with "
        r"the model's tokenizer \(the prepare scripts' --tokenizer_path, --overwrite true\)",
    ):
        main(export_lit_dir, tmp_path / "val", num_blocks=170, block_size=16)
