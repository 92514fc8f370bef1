import json
from pathlib import Path

import numpy as np
import pytest
from prepared_data import help_text, load_script
from test_data import write_jsonl_zst, write_tokenizer

from lit_gpt.cli import UserError
from lit_gpt.prepare import PrepareError, prepare
from lit_gpt.separators import (
    SEPARATORS_FILE,
    Separators,
    encode_document,
    encode_documents,
    prompt_prefix,
    read_separators,
    write_separators,
)
from lit_gpt.tokenizer import Tokenizer


def test_documents_get_bos_and_eos_as_the_convention_says(export_tokenizer_dir):
    tokenizer = Tokenizer(export_tokenizer_dir)
    text = "def f(x):\n    return x"
    ids = tokenizer.encode_ids(text)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    assert Separators() == Separators(bos=False, eos=True)  # today's preparation
    assert encode_document(tokenizer, text, Separators()) == ids + [eos]
    assert encode_document(tokenizer, text, Separators(bos=True, eos=False)) == [bos] + ids
    assert encode_document(tokenizer, text, Separators(bos=True, eos=True)) == [bos] + ids + [eos]
    assert encode_documents(tokenizer, [text, "x"], Separators()) == [ids + [eos], tokenizer.encode_ids("x") + [eos]]
    with pytest.raises(ValueError, match="documents need a separator"):
        Separators(bos=False, eos=False)


def test_separators_file_round_trip_and_fallback_to_the_tokenizer(tmp_path, capsys):
    for separators in (Separators(), Separators(bos=True, eos=False), Separators(bos=True, eos=True)):
        write_separators(tmp_path, separators)
        assert read_separators(tmp_path) == separators
    assert json.loads((tmp_path / SEPARATORS_FILE).read_text()) == {"bos": True, "eos": True}
    (tmp_path / SEPARATORS_FILE).write_text('{"bos": "yes"}')
    with pytest.raises(UserError, match=f"{SEPARATORS_FILE} records the separators as"):
        read_separators(tmp_path)

    (tmp_path / SEPARATORS_FILE).unlink()
    capsys.readouterr()
    assert read_separators(tmp_path) == Separators()  # no tokenizer_config.json: the preparation default
    note = capsys.readouterr().err
    assert "has no separators.json; assuming the model was trained with eos after each document" in note
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))  # Llama-2, TinyLlama
    assert read_separators(tmp_path) == Separators(bos=True, eos=False)


def test_prompt_prefix_is_the_token_before_each_training_document(export_tokenizer_dir):
    tokenizer = Tokenizer(export_tokenizer_dir)
    for separators in (Separators(), Separators(bos=True, eos=False), Separators(bos=True, eos=True)):
        stream = sum(encode_documents(tokenizer, ["first document", "second one"], separators), [])
        second = tokenizer.encode_ids("second one")
        start = next(i for i in range(1, len(stream)) if stream[i : i + len(second)] == second)
        assert prompt_prefix(tokenizer, separators) == stream[start - 1 : start], separators


def read_chunks(folder: Path) -> list:
    """The token stream of a prepared folder, chunk after chunk in index order (litdata's header: the number of items
    and their offsets, uint32)."""
    index = json.loads((folder / "index.json").read_text())
    stream = []
    for chunk in index["chunks"]:
        data = np.fromfile(folder / chunk["filename"], dtype=np.int32, offset=(chunk["chunk_size"] + 2) * 4)
        stream += data.tolist()
    return stream


DOCUMENTS = ["hello world", "def f(x):\n    return x", "one more document"]


def test_preparation_writes_the_separators_asked_for_and_records_them(export_tokenizer_dir, tmp_path):
    from lit_gpt.prepare import prepared_separators

    tokenizer = Tokenizer(export_tokenizer_dir)
    raw = write_jsonl_zst(tmp_path / "raw" / "a.jsonl.zst", [{"text": t} for t in DOCUMENTS]).parent

    def prepared(out: str, **flags) -> Path:
        prepare("slimpajama", raw, str(tmp_path / out), export_tokenizer_dir, 2049, num_workers=1, verbose=False,
                **flags)  # fmt: skip
        return tmp_path / out

    default, explicit = prepared("default"), prepared("explicit", bos=False, eos=True)
    # the default is today's output, byte for byte: eos after each document
    assert {p.name: p.read_bytes() for p in default.iterdir()} == {p.name: p.read_bytes() for p in explicit.iterdir()}
    assert read_chunks(default) == sum((tokenizer.encode_ids(t) + [tokenizer.eos_id] for t in DOCUMENTS), [])
    assert json.loads((default / "prepare.json").read_text())["separators"] == {"bos": False, "eos": True}

    # the flags of the scripts
    load_script("prepare_slimpajama").main(raw, str(tmp_path / "both"), export_tokenizer_dir, 2049, num_workers=1,
                                           bos=True, eos=True)  # fmt: skip
    both = tmp_path / "both"
    assert read_chunks(both) == sum((encode_document(tokenizer, t, Separators(True, True)) for t in DOCUMENTS), [])
    assert read_chunks(both)[:2] == [tokenizer.bos_id, tokenizer.encode_ids(DOCUMENTS[0])[0]]
    assert json.loads((both / "prepare.json").read_text())["separators"] == {"bos": True, "eos": True}

    # another convention into the same folder: refused, naming both, or replaced with --overwrite true
    with pytest.raises(PrepareError, match="with bos before and eos after each document .this run: eos after each"):
        prepared("both")
    bos_only = prepared("both", bos=True, eos=False, overwrite=True)
    assert read_chunks(bos_only) == sum(([tokenizer.bos_id] + tokenizer.encode_ids(t) for t in DOCUMENTS), [])
    assert prepared_separators(bos_only) == Separators(bos=True, eos=False)
    # a folder prepared before the convention was recorded counts as the default
    manifest = json.loads((default / "prepare.json").read_text())
    del manifest["separators"]
    (default / "prepare.json").write_text(json.dumps(manifest))
    assert prepared_separators(default) == Separators()

    with pytest.raises(PrepareError, match="--bos false --eos false would lay the documents end to end"):
        prepared("none", bos=False, eos=False)
    no_bos = write_tokenizer(tmp_path / "no-bos")  # names </s> as its eos token, no bos token
    with pytest.raises(PrepareError, match=r"no-bos has no beginning-of-document \(bos\) token, which --bos true"):
        prepare("slimpajama", raw, str(tmp_path / "x"), no_bos, 2049, num_workers=1, verbose=False, bos=True)
    assert not (tmp_path / "x").exists()


def test_long_documents_get_the_same_separators(export_tokenizer_dir, tmp_path, monkeypatch):
    """A document longer than PIECE_CHARS (encoded in pieces) is wrapped like the others."""
    import lit_gpt.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 100)
    tokenizer = Tokenizer(export_tokenizer_dir)
    long = " ".join(["a long document"] * 40)
    path = write_jsonl_zst(tmp_path / "a.jsonl.zst", [{"text": "short"}, {"text": long}, {"text": "end"}])
    for separators in (Separators(), Separators(bos=True, eos=False), Separators(bos=True, eos=True)):
        items = prepare_module.tokenize_files([str(path)], "slimpajama", str(export_tokenizer_dir), 4096,
                                              separators=separators)  # fmt: skip
        expected = encode_documents(tokenizer, ["short", long, "end"], separators)
        assert np.concatenate(list(items)).tolist() == sum(expected, []), separators


@pytest.mark.parametrize("script", ["prepare_slimpajama", "prepare_starcoder", "prepare_text"])
def test_every_prepare_script_takes_bos_and_eos(script):
    text = help_text(load_script(script).main)
    assert "--bos {true,false}" in text and "--eos {true,false}" in text
