import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from prepared_data import help_text, load_script
from test_data import write_jsonl_zst, write_tokenizer

from lit_gpt.cli import UserError
from lit_gpt.data.prepare import prepare
from lit_gpt.data.readers import PrepareError
from lit_gpt.data.separators import (
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


def test_a_tokenizer_without_the_separator_is_refused_in_one_line(tmp_path):
    no_bos = Tokenizer(write_tokenizer(tmp_path / "no-bos"))  # names </s> as its eos token, no bos token
    assert encode_document(no_bos, "hello world", Separators()) == [3, 4, 2]
    with pytest.raises(UserError, match=r"no-bos has no beginning-of-document \(bos\) token, which the model's conv"):
        encode_document(no_bos, "hello world", Separators(bos=True, eos=True))


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


def test_a_separators_json_that_is_no_record_is_refused_not_gone_around(tmp_path):
    """A folder or a dangling link under the name would have sent generation to the tokenizer's guess with a note
    saying there was no file; a huge file is not read whole; keys it does not know are left alone."""
    (tmp_path / "dir" / SEPARATORS_FILE).mkdir(parents=True)
    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / SEPARATORS_FILE).symlink_to(tmp_path / "nowhere")
    for name in ("dir", "dangling"):
        with pytest.raises(UserError, match=f"{name}/{SEPARATORS_FILE} is not a file; delete it to go by the token"):
            read_separators(tmp_path / name)
    (tmp_path / SEPARATORS_FILE).write_text('{"bos": true, "eos": false' + " " * 100_000 + "}")
    with pytest.raises(UserError, match="cannot be read \\(over 65536 bytes, where it holds two booleans\\)"):
        read_separators(tmp_path)
    (tmp_path / SEPARATORS_FILE).write_text('{"bos": true, "eos": false, "written_by": "a later version"}')
    assert read_separators(tmp_path) == Separators(bos=True, eos=False)


def test_separators_json_is_written_in_its_directory_alone_and_two_writers_do_not_collide(tmp_path):
    """Links left in the output directory (under the final name or a temporary one) are replaced, never written
    through; two writes into one directory at once each finish."""
    from lit_gpt.files import atomic_file

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / SEPARATORS_FILE).symlink_to(elsewhere / "a.json")
    (out / f"{SEPARATORS_FILE}.tmp").symlink_to(elsewhere / "b.json")
    write_separators(out, Separators(bos=True, eos=True))
    assert list(elsewhere.iterdir()) == []
    assert not (out / SEPARATORS_FILE).is_symlink() and read_separators(out) == Separators(bos=True, eos=True)

    target = tmp_path / "lit_config.json"
    with atomic_file(target) as first, atomic_file(target) as second:  # interleaved, as two processes would
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "lit_config.json",
        "out",
    ]


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
    from lit_gpt.data.prepare import prepared_separators

    tokenizer = Tokenizer(export_tokenizer_dir)
    raw = write_jsonl_zst(tmp_path / "raw" / "a.jsonl.zst", [{"text": t} for t in DOCUMENTS]).parent

    def prepared(out: str, **flags) -> Path:
        prepare("slimpajama", raw, str(tmp_path / out), export_tokenizer_dir, 2049, num_workers=1, verbose=False,
                **flags)  # fmt: skip
        return tmp_path / out

    default = prepared("default")
    # the default is today's output: eos after each document (the chunks and index.json are those of this stream)
    assert read_chunks(default) == sum((tokenizer.encode_ids(t) + [tokenizer.eos_id] for t in DOCUMENTS), [])
    manifest = json.loads((default / "prepare.json").read_text())
    assert (
        manifest["separators"] == {"bos": False, "eos": True} and manifest["eos_id"] == 2 and "bos_id" not in manifest
    )

    # the flags of the scripts
    load_script("prepare_slimpajama").main(raw, str(tmp_path / "both"), export_tokenizer_dir, 2049, num_workers=1,
                                           bos=True, eos=True)  # fmt: skip
    both = tmp_path / "both"
    assert read_chunks(both) == sum((encode_document(tokenizer, t, Separators(True, True)) for t in DOCUMENTS), [])
    assert read_chunks(both)[:2] == [tokenizer.bos_id, tokenizer.encode_ids(DOCUMENTS[0])[0]]
    manifest = json.loads((both / "prepare.json").read_text())
    assert manifest["separators"] == {"bos": True, "eos": True} and (manifest["bos_id"], manifest["eos_id"]) == (1, 2)

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
    import lit_gpt.data.prepare as prepare_module

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


def _prepared_folder(path: Path, separators) -> str:
    """Real litdata chunks of 40 blocks, with the `prepare.json` a preparation of `separators` writes with a
    tokenizer of bos 1 and eos 2 (None: none, as before it was recorded)."""
    from test_pretrain import _write_chunks, same_tokens

    _write_chunks(same_tokens, 40, path)
    if separators is not None:
        manifest = {"separators": separators.to_dict(), "files": sorted(p.name for p in path.iterdir())}
        manifest.update({f"{name}_id": i for name, i in (("bos", 1), ("eos", 2)) if getattr(separators, name)})
        (path / "prepare.json").write_text(json.dumps(manifest))
    return str(path)


def test_pretraining_records_the_separators_of_its_data_and_refuses_a_mix(tmp_path, monkeypatch):
    from test_pretrain import BLOCK, load_script

    from lit_gpt.training.checkpoint import check_compatible

    bos = Separators(bos=True, eos=False)
    a, b = _prepared_folder(tmp_path / "a", bos), _prepared_folder(tmp_path / "b", bos)
    val = _prepared_folder(tmp_path / "val", bos)
    script = load_script()
    seen = {}
    monkeypatch.setattr(script, "main", lambda fabric, config, hparams, *_: seen.update(hparams))  # no training
    flags = dict(model_name="micro-llama", block_size=BLOCK, accelerator="cpu", devices=1, precision="32-true",
                 global_batch_size=8, micro_batch_size=2, logger_name="csv")  # fmt: skip
    script.setup(train_data={a: 1, b: 1}, val_data=val, out_dir=tmp_path / "out", **flags)
    assert seen["separators"] == {"bos": True, "eos": False}

    old = _prepared_folder(tmp_path / "old", None)  # prepared before the convention was recorded: the default
    mix = f"different document separators: {a}, {b}, {val} with bos before each document; {old} with eos after each"
    with pytest.raises(ValueError, match=mix):
        script.setup(train_data={a: 1, b: 1, old: 1}, val_data=val, out_dir=tmp_path / "out2", **flags)
    assert not (tmp_path / "out2").exists()

    # a resume on data prepared again with another convention
    metadata = {"hparams": {"model_config": {}, "world_size": 1, "separators": seen["separators"]}}
    with pytest.raises(ValueError, match="trained on documents with bos before each document, this run's data has eos"):
        check_compatible(Path("step-00000002.pth"), metadata, {}, 1, {"separators": {"bos": False, "eos": True}})
    check_compatible(Path("step-00000002.pth"), metadata, {}, 1, {"separators": {"bos": True, "eos": False}})


def test_the_document_mask_splits_at_the_recorded_eos_and_refuses_data_without_one(tmp_path):
    from lit_gpt.data.loaders import data_eos_id

    both = _prepared_folder(tmp_path / "both", Separators(bos=True, eos=True))
    assert data_eos_id([both], None, 512) == 2  # recorded by preparation: no --eos_id needed
    bos_only = _prepared_folder(tmp_path / "bos", Separators(bos=True, eos=False))
    with pytest.raises(ValueError, match=f"--document_mask splits documents at their eos token, and {bos_only} hold"):
        data_eos_id([both, bos_only], 2, 512)


def test_the_document_mask_refuses_a_bogus_recorded_eos_id_and_an_eos_id_flag_that_contradicts_it(tmp_path):
    from lit_gpt.data.loaders import data_eos_id, data_separators

    folder = _prepared_folder(tmp_path / "data", Separators())
    with pytest.raises(ValueError, match=r"--eos_id 1: .*/data/prepare.json records 2 as the id written after each"):
        data_eos_id([folder], 1, 512)
    assert data_eos_id([folder], 2, 512) == 2
    manifest = Path(folder) / "prepare.json"
    record = json.loads(manifest.read_text())
    for bogus in ("2", True, 2.0, -1, 512, [2]):  # a string or a bool would have split at the wrong id, or crashed
        manifest.write_text(json.dumps({**record, "eos_id": bogus}))
        with pytest.raises(
            ValueError, match=rf"prepare.json records eos_id {re.escape(repr(bogus))}, not a token id of the"
        ):
            data_eos_id([folder], None, 512)
    manifest.write_text(json.dumps({**record, "separators": {"bos": True, "eos": True}})[:-1])  # cut short
    for read in (data_separators, data_eos_id):  # the first read it as the default, eos after each document
        with pytest.raises(UserError, match=r"prepare.json cannot be read \(Expecting .*\): prepare .*/data again"):
            read([folder], *([None, 512] if read is data_eos_id else []))


def test_the_document_mask_refuses_a_validation_folder_of_another_eos_id(tmp_path, monkeypatch):
    """Validation runs under the training mask: a held-out set prepared with another tokenizer's eos would have
    been validated with documents split at an id it does not end them with."""
    from test_pretrain import BLOCK, load_script

    train, val = _prepared_folder(tmp_path / "train", Separators()), _prepared_folder(tmp_path / "val", Separators())
    manifest = Path(val) / "prepare.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "eos_id": 5}))
    script = load_script()
    monkeypatch.setattr(script, "main", lambda *_: pytest.fail("refused before training"))
    with pytest.raises(ValueError, match=r"prepared with different end-of-document ids \(\{.*train': 2, .*val': 5\}"):
        script.setup(model_name="micro-llama", block_size=BLOCK, accelerator="cpu", devices=1, precision="32-true",
                     global_batch_size=8, micro_batch_size=2, logger_name="csv", train_data={train: 1}, val_data=val,
                     out_dir=tmp_path / "out", document_mask=True)  # fmt: skip


def test_continued_pretraining_on_data_of_another_convention_says_so(tmp_path, capsys):
    from lit_gpt.data.loaders import data_separators

    eos_data = _prepared_folder(tmp_path / "eos", Separators())
    (tmp_path / "tinyllama").mkdir()
    write_separators(tmp_path / "tinyllama", Separators(bos=True, eos=False))
    assert data_separators([eos_data], tmp_path / "tinyllama") == Separators()
    note = capsys.readouterr().err
    assert "was trained with bos before each document, the data has eos after each document" in note
    assert "prepare the data with --bos true --eos false" in note
    (tmp_path / "ours").mkdir()
    write_separators(tmp_path / "ours", Separators())
    data_separators([eos_data], tmp_path / "ours")
    assert capsys.readouterr().err == ""


def _training_checkpoint(path: Path, separators=None) -> Path:
    """A checkpoint as pretrain/tinyllama.py saves it on one process: the model and the hparams that the converter
    reads (`separators` None: a checkpoint from before they were recorded)."""
    import torch
    from conftest import TEST_LLAMA

    from lit_gpt.config import Config
    from lit_gpt.model import GPT

    config = Config(**TEST_LLAMA)
    torch.manual_seed(0)
    hparams = {"model_config": config.to_dict(), "model_name": config.name}
    if separators is not None:
        hparams["separators"] = separators.to_dict()
    torch.save({"model": GPT(config).state_dict(), "hparams": hparams, "step_count": 2}, path)
    return path


def _llama_style_tokenizer(export_tokenizer_dir: Path, out: Path) -> Path:
    """The test tokenizer with Llama-2's `add_bos_token: true`."""
    out.mkdir()
    (out / "tokenizer.model").write_bytes((export_tokenizer_dir / "tokenizer.model").read_bytes())
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_converters_write_the_separators_and_the_export_follows_them(export_tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    from scripts.convert_hf_checkpoint import convert as import_hf
    from scripts.convert_lit_checkpoint import convert as export_hf
    from scripts.convert_pretrained_checkpoint import convert

    llama_tokenizer = _llama_style_tokenizer(export_tokenizer_dir, tmp_path / "tokenizer")
    for name, recorded, expected in [
        ("both", Separators(bos=True, eos=True), Separators(bos=True, eos=True)),
        ("older", None, Separators()),  # trained before the separators were recorded: on data with the default
    ]:
        lit, hf, back = tmp_path / f"lit-{name}", tmp_path / f"hf-{name}", tmp_path / f"back-{name}"
        convert(_training_checkpoint(tmp_path / f"{name}.pth", recorded), llama_tokenizer, output_dir=lit)
        assert read_separators(lit) == expected
        # the lit checkpoint's tokenizer says the same (the source said add_bos_token: true)
        assert json.loads((lit / "tokenizer_config.json").read_text())["add_bos_token"] is expected.bos
        tokenizer = Tokenizer(lit)
        assert tokenizer.encode_ids("x", bos=None) == [1] * expected.bos + tokenizer.encode_ids("x")

        export_hf(lit, hf)
        assert json.loads((hf / "tokenizer_config.json").read_text())["add_bos_token"] is expected.bos
        with_special = HFTokenizer.from_file(str(hf / "tokenizer.json")).encode("x").ids
        assert (with_special[0] == 1) is expected.bos  # what transformers' tokenizer(text) puts in front

        import_hf(hf, output_dir=back)  # the Hugging Face side knows bos alone: both becomes bos before each
        assert read_separators(back) == Separators(bos=expected.bos, eos=not expected.bos)

    # TinyLlama's and Llama-2's Hugging Face tokenizers: bos before each document
    import_hf(tmp_path / "hf-both", output_dir=tmp_path / "tinyllama")
    assert json.loads((tmp_path / "tinyllama" / "separators.json").read_text()) == {"bos": True, "eos": False}


def test_generation_without_the_prompt_prefix_token_says_so_before_reading_the_weights(tmp_path):
    """separators.json says bos, the tokenizer has none: refused in one line before a model of many GB is loaded
    (here lit_model.pth is no checkpoint at all, which the loader would have failed on instead)."""
    from prepared_data import ROOT

    from lit_gpt.config import Config

    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    lit = write_tokenizer(tmp_path / "lit")  # eos </s>, no bos token
    (lit / "lit_config.json").write_text(json.dumps(Config.from_name("micro-llama").to_dict()))
    (lit / "lit_model.pth").write_bytes(b"not a checkpoint")
    write_separators(lit, Separators(bos=True, eos=False))
    with pytest.raises(UserError, match="lit has no bos token, which every training document began after"):
        base.main(lit, prompt="hello", max_new_tokens=1, precision="32-true")


@pytest.mark.parametrize(
    "separators, prefix",
    [(Separators(), "eos"), (Separators(bos=True, eos=False), "bos"), (Separators(bos=True, eos=True), "bos")],
)
def test_generation_prompt_starts_as_the_training_documents_did(export_tokenizer_dir, tmp_path, monkeypatch,
                                                                 separators, prefix):  # fmt: skip
    from prepared_data import ROOT

    from scripts.convert_pretrained_checkpoint import convert

    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    prompts = []

    def spy(model, prompt, *args, **kwargs):
        prompts.append(prompt.tolist())
        return base_generate(model, prompt, *args, **kwargs)

    base_generate = base.generate
    monkeypatch.setattr(base, "generate", spy)
    lit = tmp_path / "lit"
    convert(_training_checkpoint(tmp_path / "step.pth", separators), export_tokenizer_dir, output_dir=lit)
    base.main(lit, prompt="def forward", max_new_tokens=1, precision="32-true")
    tokenizer = Tokenizer(lit)
    assert prompts == [[getattr(tokenizer, f"{prefix}_id")] + tokenizer.encode_ids("def forward")]
