import json

import pytest

from lit_gpt.cli import UserError
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
