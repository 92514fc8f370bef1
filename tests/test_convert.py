"""Checkpoint conversion on real checkpoints: Fabric training runs (one process, single file; two processes,
sharded), a real SentencePiece tokenizer, and the exports loaded by transformers (fixtures in conftest.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32
# pretrain/tinyllama.py on micro-llama, 2 optimizer steps of 8 sequences
PRETRAIN = [
    "--model_name", "micro-llama", "--block_size", str(BLOCK), "--accelerator", "cpu", "--precision", "32-true",
    "--global_batch_size", "8", "--micro_batch_size", "2", "--max_steps", "2", "--save_interval", "2",
    "--warmup_steps", "1", "--logger_name", "csv", "--num_workers", "1", "--eval_iters", "1", "--eval_interval", "100",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _registered(register_test_llama):
    pass


def test_pretrained_checkpoint_files(fabric_checkpoints, export_lit_dir, export_tokenizer_dir):
    assert fabric_checkpoints["single"].is_file()
    names = sorted(p.name for p in export_lit_dir.iterdir())
    assert names == [".lit_gpt_conversion.json", "lit_config.json", "lit_model.pth", "lit_model.pth.sealed"] + [
        "separators.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = Config.from_file(export_lit_dir / "lit_config.json")
    assert config.to_dict() == Config.from_name("test-llama").to_dict()
    state_dict = torch.load(export_lit_dir / "lit_model.pth", weights_only=True)
    model = GPT(config)
    model.load_state_dict(state_dict, strict=True)
    # the weights are the trained ones, not an initialization
    raw = torch.load(fabric_checkpoints["single"], weights_only=True)
    assert set(raw) >= {"model", "optimizer", "step_count"}
    for name, tensor in state_dict.items():
        assert torch.equal(tensor, raw["model"][name]), name


def test_pickled_objects_need_trust(fabric_checkpoints, export_tokenizer_dir, tmp_path):
    """A checkpoint with pickled objects besides tensors is refused unless the user vouches for it."""
    import argparse

    from scripts.convert_pretrained_checkpoint import convert

    raw = torch.load(fabric_checkpoints["single"], weights_only=True)
    path = tmp_path / "other-tool.pth"
    torch.save({"model": raw["model"], "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ValueError, match="pickled Python objects.*--trust_pickle true"):
        convert(path, export_tokenizer_dir, "test-llama", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    convert(path, export_tokenizer_dir, "test-llama", tmp_path / "trusted", trust_pickle=True)
    converted = torch.load(tmp_path / "trusted" / "lit_model.pth", weights_only=True)
    assert all(torch.equal(converted[k], raw["model"][k]) for k in converted)


def test_refuses_mismatching_config_and_nonempty_output(fabric_checkpoints, export_tokenizer_dir, tmp_path):
    from scripts.convert_pretrained_checkpoint import convert

    with pytest.raises(
        ValueError,
        match=r"'lm_head.weight' has shape \(512, 128\) in the checkpoint but \(32000, 128\).*"
        r"Pass the --config_name it was trained as",
    ):
        convert(fabric_checkpoints["single"], export_tokenizer_dir, "micro-llama", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    b = tmp_path / "b"
    b.mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    (tmp_path / "b" / "tokenizer.json").write_text("{}")  # another tool's: not this script's to delete
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(fabric_checkpoints["single"], export_tokenizer_dir, "test-llama", tmp_path / "b")
    with pytest.raises(FileExistsError, match="holds tokenizer.json, which convert_pretrained_checkpoint.py did not"):
        convert(fabric_checkpoints["single"], export_tokenizer_dir, "test-llama", tmp_path / "b", overwrite=True)
    assert (tmp_path / "b" / "tokenizer.json").read_text() == "{}"
    (tmp_path / "b" / "tokenizer.json").unlink()
    convert(fabric_checkpoints["single"], export_tokenizer_dir, "test-llama", tmp_path / "b", overwrite=True)
    # an earlier conversion from a --tokenizer_dir of a tokenizer.json alone leaves it: replaced by an overwrite
    json_only = tmp_path / "json-only"
    json_only.mkdir()
    (json_only / "tokenizer.json").write_text("\n" + (b / "tokenizer.json").read_text())  # to tell it apart
    convert(fabric_checkpoints["single"], json_only, "test-llama", b, overwrite=True)
    assert (b / "tokenizer.json").read_text().startswith("\n")
    convert(fabric_checkpoints["single"], export_tokenizer_dir, "test-llama", b, overwrite=True)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == [".lit_gpt_conversion.json", "keep.txt", "lit_config.json", "lit_model.pth"] + [
        "lit_model.pth.sealed",
        "separators.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert not (b / "tokenizer.json").read_text().startswith("\n")


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_converters_never_delete_their_inputs(fabric_checkpoints, export_tokenizer_dir, export_lit_dir, tmp_path):
    """An --output_dir that is, lies in or holds an input is refused even with --overwrite true, which used to delete
    the tokenizer (or the weights) in it before reading them; nothing of the inputs changes."""
    from scripts.convert_hf_checkpoint import convert as import_hf
    from scripts.convert_lit_checkpoint import convert as export_hf
    from scripts.convert_pretrained_checkpoint import convert

    tokenizer = tmp_path / "data" / "tokenizer"
    tokenizer.mkdir(parents=True)
    (tokenizer / "tokenizer.model").write_bytes((export_tokenizer_dir / "tokenizer.model").read_bytes())
    checkpoint = tmp_path / "run" / "step-00000002.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(fabric_checkpoints["single"].read_bytes())
    lit = tmp_path / "lit"
    lit.mkdir()
    for name in ("lit_config.json", "lit_model.pth", "tokenizer.model"):
        (lit / name).write_bytes((export_lit_dir / name).read_bytes())
    before = _tree(tmp_path)

    for out, match in [
        (tokenizer, "is --tokenizer_dir"),
        (tokenizer / "lit", "lies inside --tokenizer_dir"),
        (tmp_path / "data", "holds --tokenizer_dir"),
        (checkpoint.parent, "holds --checkpoint_file"),
    ]:
        with pytest.raises(ValueError, match=f"--output_dir .* {match} .*Choose an --output_dir outside"):
            convert(checkpoint, tokenizer, "test-llama", out, overwrite=True)
    for out, match in [(lit, "is"), (lit / "hf", "lies inside"), (tmp_path, "holds")]:
        with pytest.raises(ValueError, match=f"--output_dir .* {match} --checkpoint_dir"):
            export_hf(lit, out, overwrite=True)
    assert _tree(tmp_path) == before

    hf = tmp_path / "hf"
    export_hf(lit, hf)
    before = _tree(hf)
    for out, match in [(hf / "lit", "lies inside"), (tmp_path, "holds")]:
        with pytest.raises(ValueError, match=f"--output_dir .* {match} --checkpoint_dir"):
            import_hf(hf, output_dir=out, overwrite=True)
    import_hf(hf)  # by default next to the Hugging Face files, which stay as they are
    with pytest.raises(FileExistsError, match="--overwrite true"):
        import_hf(hf)
    import_hf(hf, overwrite=True)  # its own earlier lit files
    after = _tree(hf)
    assert {k: after[k] for k in before if k != ".lit_gpt_conversion.json"} == {
        k: v for k, v in before.items() if k != ".lit_gpt_conversion.json"
    }
    assert torch.load(hf / "lit_model.pth", weights_only=True).keys() == torch.load(lit / "lit_model.pth").keys()


def test_refuses_a_checkpoint_with_more_layers_than_the_config(
    fabric_checkpoints, export_tokenizer_dir, tmp_path, monkeypatch
):
    """Every weight of the checkpoint has its place in the config's model: the layers a too-small config lacks are
    not dropped silently."""
    from lit_gpt.config import name_to_config
    from scripts.convert_pretrained_checkpoint import convert

    monkeypatch.setitem(
        name_to_config, "two-layers", {**name_to_config["test-llama"], "name": "two-layers", "n_layer": 2}
    )
    with pytest.raises(
        ValueError, match="has a weight 'transformer.h.2.norm_1.weight' that 'two-layers' does not have"
    ):
        convert(fabric_checkpoints["single"], export_tokenizer_dir, "two-layers", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "name",
    [
        "transformer.h.0.attn.attn.weight",
        "module.transformer.h.0.attn.attn.weight",  # DDP
        "_forward_module._orig_mod.transformer.h.0.attn.attn.weight",  # Fabric, torch.compile
        "transformer.h.0._checkpoint_wrapped_module.attn.attn.weight",  # activation checkpointing
        "_fsdp_wrapped_module.transformer.h.0.attn.attn.weight",  # FSDP1
    ],
)
def test_wrapper_prefixes_are_stripped(name):
    from lit_gpt.weights import strip_wrapper_prefixes

    assert strip_wrapper_prefixes(name) == "transformer.h.0.attn.attn.weight"


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("group_size", ["1GB", "300KB"])
def test_sharded_checkpoint_consolidates_in_groups(export_tokenizer_dir, tmp_path, group_size):
    """A torch.distributed.checkpoint directory (as `fabric.save` writes for sharded models), read without a process
    group in one group of tensors or several (the last one smaller): every weight, unchanged."""
    import torch.distributed.checkpoint as dcp

    from scripts.convert_pretrained_checkpoint import convert

    torch.manual_seed(0)
    state_dict = GPT(Config.from_name("test-llama", n_layer=2)).state_dict()
    optimizer = {"state": {"step": torch.tensor(3.0)}}  # not under "model": not read
    path = tmp_path / "step-00000002.pth"
    dcp.save({"model": state_dict, "optimizer": optimizer}, storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    hparams = {"model_config": Config.from_name("test-llama", n_layer=2).to_dict()}
    torch.save({"hparams": hparams, "step_count": 2}, path / "meta.pt")
    convert(path, export_tokenizer_dir, output_dir=tmp_path / "lit", group_size=group_size)
    converted = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    assert list(converted) == list(state_dict)
    for name, tensor in state_dict.items():
        assert torch.equal(converted[name], tensor), name


def test_pretrained_conversion_uses_the_config_saved_in_the_checkpoint(
    fabric_checkpoints, export_tokenizer_dir, tmp_path, monkeypatch
):
    """pretrain/tinyllama.py saves `hparams["model_config"]` (here with `--block_size 64`, not the registry's 256):
    that is the config converted, and --config_name is only a check of it."""
    from scripts.convert_pretrained_checkpoint import convert

    raw = torch.load(fabric_checkpoints["single"], weights_only=True)
    trained = Config.from_name("test-llama", block_size=64)
    hparams = {"model_name": "test-llama", "block_size": 64, "model_config": trained.to_dict()}
    path = tmp_path / "step-00000002.pth"
    torch.save({**raw, "hparams": hparams}, path)

    monkeypatch.chdir(tmp_path)  # the default --output_dir is checkpoints/lit-<config name>
    convert(path, export_tokenizer_dir)
    assert Config.from_file(tmp_path / "checkpoints/lit-test-llama/lit_config.json").to_dict() == trained.to_dict()
    convert(path, export_tokenizer_dir, "test-llama", tmp_path / "named")
    assert Config.from_file(tmp_path / "named/lit_config.json").block_size == 64

    with pytest.raises(ValueError, match="--config_name 'micro-llama' does not match .* trained as 'test-llama'"):
        convert(path, export_tokenizer_dir, "micro-llama", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    # a checkpoint that records no config (the fixture's) needs --config_name
    with pytest.raises(ValueError, match="does not record the model config.*--config_name"):
        convert(fabric_checkpoints["single"], export_tokenizer_dir, output_dir=tmp_path / "unnamed")
    assert not (tmp_path / "unnamed").exists()
    # weights that do not fit the config saved beside them: --config_name would not help
    edited = tmp_path / "edited.pth"
    torch.save({**raw, "hparams": {**hparams, "model_config": Config.from_name("micro-llama").to_dict()}}, edited)
    with pytest.raises(ValueError, match="do not match the model config saved in it") as e:
        convert(edited, export_tokenizer_dir, output_dir=tmp_path / "edited")
    assert "--config_name" not in str(e.value)
    # a config with a field this version does not know (saved by another version of lit_gpt)
    future = tmp_path / "future.pth"
    torch.save({**raw, "hparams": {**hparams, "model_config": {**trained.to_dict(), "sliding_window": 4096}}}, future)
    with pytest.raises(ValueError, match="cannot read.*unknown fields: \\['sliding_window'\\]"):
        convert(future, export_tokenizer_dir, output_dir=tmp_path / "future")


def test_cli_refusal_names_first_mismatching_key(fabric_checkpoints, export_tokenizer_dir, tmp_path, capsys):
    from test_cli import entry_point, refusal

    args = ["--checkpoint_file", str(fabric_checkpoints["single"]), "--tokenizer_dir", str(export_tokenizer_dir)]
    args += ["--config_name", "micro-llama", "--output_dir", str(tmp_path / "o")]
    # through the script's own `cli(convert)` in-process (its __main__ block is that call; a Python start with torch
    # and lightning cost ~10 s here): exit code 2 and the one `error:` line
    line = refusal(capsys, entry_point("scripts/convert_pretrained_checkpoint.py").convert, *args)
    assert "'lm_head.weight' has shape (512, 128) in the checkpoint but (32000, 128) in the model" in line
    assert not (tmp_path / "o").exists()


def test_hf_export_loads_in_transformers_with_equal_logits(export_lit_dir, export_hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in export_hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1

    theirs = AutoModelForCausalLM.from_pretrained(export_hf_dir, attn_implementation="eager").eval()
    assert _max_logit_difference(theirs, export_lit_dir) <= 1e-5

    hf_tokenizer = AutoTokenizer.from_pretrained(export_hf_dir)
    text = "def forward(self, x):\n    return  x ** 2  # Über 3.14"
    assert hf_tokenizer.encode(text, add_special_tokens=False) == Tokenizer(export_lit_dir).encode_ids(text)
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id) == (1, 2)


def test_hf_export_tokenizer_loads_without_sentencepiece(export_lit_dir, export_hf_dir, plain_transformers_encode):
    """transformers alone (sentencepiece and protobuf not importable) loads the export's tokenizer, which gives lit's
    ids, and knows the model's context length."""
    from scripts.convert_lit_checkpoint import _PROBE

    texts = [_PROBE, "  two", "def forward(self, x):\n    return  x ** 2  # Über 3.14", "\n\n   \t x  ", "<s>é☃"]
    theirs = plain_transformers_encode(export_hf_dir, texts)
    ours = Tokenizer(export_lit_dir)
    assert theirs["ids"] == [ours.encode_ids(t) for t in texts]
    assert theirs["model_max_length"] == Config.from_file(export_lit_dir / "lit_config.json").block_size == 256
    assert (theirs["bos_token_id"], theirs["eos_token_id"]) == (1, 2)


def test_export_files_follow_the_umask(export_lit_dir, tmp_path):
    """Every exported file (the safetensors shards included, which safetensors writes 0600) has the mode the umask
    gives new files (0644 under the usual 022; 0640 under 027 here), so that colleagues can read a shared export."""
    from scripts.convert_lit_checkpoint import convert

    before = os.umask(0o027)
    try:
        convert(export_lit_dir, tmp_path / "hf", max_shard_size="1MB")
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert len([n for n in modes if n.endswith(".safetensors")]) > 1
    assert set(modes.values()) == {0o640}, modes


def _max_logit_difference(hf_model, lit_dir: Path) -> float:
    """Largest difference between a transformers model's logits and those of the lit checkpoint in `lit_dir`, on
    two random sequences of the lit config's block size."""
    config = Config.from_file(lit_dir / "lit_config.json")
    ours = GPT(config).eval()
    ours.load_state_dict(torch.load(lit_dir / "lit_model.pth", weights_only=True), strict=True)
    idx = torch.randint(0, config.vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (hf_model.eval()(idx).logits - ours(idx)).abs().max().item()


def test_hf_export_overwrite_replaces_the_earlier_export(export_lit_dir, export_tokenizer_dir, tmp_path):
    """A second export into the same directory leaves nothing of the first that transformers would load instead:
    not its single `model.safetensors` next to the new shards."""
    from transformers import AutoModelForCausalLM

    from scripts.convert_lit_checkpoint import convert as export

    first = _tutorial_tokenizer(export_tokenizer_dir, tmp_path / "first")  # tokenizer.model + tokenizer.json
    second = tmp_path / "second"
    second.mkdir()
    (second / "tokenizer.model").write_bytes((export_tokenizer_dir / "tokenizer.model").read_bytes())
    for lit_dir in (first, second):
        (lit_dir / "lit_config.json").write_bytes((export_lit_dir / "lit_config.json").read_bytes())
    weights = torch.load(export_lit_dir / "lit_model.pth", weights_only=True)
    torch.save(weights, first / "lit_model.pth")
    torch.save({k: v * 0.5 for k, v in weights.items()}, second / "lit_model.pth")

    out = tmp_path / "hf"
    export(first, out)
    assert {"model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    (out / "README.md").write_text("a model card")
    export(second, out, max_shard_size="1MB", overwrite=True)

    names = {p.name for p in out.iterdir()}
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) > 1 and all(n.startswith("model-") for n in shards), names
    assert "README.md" in names, names
    theirs = AutoModelForCausalLM.from_pretrained(out)
    assert _max_logit_difference(theirs, second) <= 1e-5


def test_overwrite_refuses_an_export_changed_since_by_another_tool(export_lit_dir, tmp_path):
    """An export that the user then replaced with transformers' `save_pretrained` (a fine-tune saved into the same
    folder) is not the converter's output any more: --overwrite true refuses it instead of deleting the fine-tune;
    an export left as it was is replaced."""
    from transformers import AutoModelForCausalLM

    from scripts.convert_lit_checkpoint import convert as export

    out = tmp_path / "hf"
    export(export_lit_dir, out)
    export(export_lit_dir, out, overwrite=True)
    AutoModelForCausalLM.from_pretrained(out).save_pretrained(out)
    saved = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=r"holds config.json, .*model.safetensors, which convert_lit_checkpoint"):
        export(export_lit_dir, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == saved


@pytest.mark.parametrize("fmt", ["safetensors-sharded", "bin"])
def test_round_trip_lit_hf_lit_is_bit_identical(export_lit_dir, export_hf_dir, tmp_path, fmt):
    from scripts.convert_hf_checkpoint import convert

    if fmt == "bin":  # a hub directory with a single pytorch_model.bin, as older fabric_checkpoints have
        from lit_gpt.convert import hf_checkpoint_tensors

        src = tmp_path / "bin-dir"
        src.mkdir()
        torch.save(dict(hf_checkpoint_tensors(export_hf_dir)), src / "pytorch_model.bin")
        for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"):
            (src / name).write_bytes((export_hf_dir / name).read_bytes())
    else:
        src = export_hf_dir
    convert(src, model_name="test-llama", output_dir=tmp_path / "back")
    original = torch.load(export_lit_dir / "lit_model.pth", weights_only=True)
    back = torch.load(tmp_path / "back" / "lit_model.pth", weights_only=True)
    assert list(back) == list(original)
    for name in original:
        assert back[name].dtype == original[name].dtype and torch.equal(back[name], original[name]), name
    assert json.loads((tmp_path / "back" / "lit_config.json").read_text()) == json.loads(
        (export_lit_dir / "lit_config.json").read_text()
    )
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (export_lit_dir / "tokenizer.model").read_bytes()


def test_hf_conversion_reads_config_json_without_model_name(export_hf_dir, tmp_path):
    from scripts.convert_hf_checkpoint import convert

    convert(export_hf_dir, output_dir=tmp_path)
    config = Config.from_file(tmp_path / "lit_config.json")
    expected = Config.from_name("test-llama")
    fields = ("n_layer", "n_head", "n_embd", "n_query_groups", "intermediate_size", "rope_base", "padded_vocab_size")
    for field in fields:
        assert getattr(config, field) == getattr(expected, field), field
    assert config.name == "hf-test-llama"
    with pytest.raises(ValueError, match="--model_name 'tiny-llama-1.1b' has n_layer=22"):
        convert(export_hf_dir, model_name="tiny-llama-1.1b", output_dir=tmp_path / "x")
    # another RMSNorm epsilon changes every layer's output a little: refused too
    other_eps = tmp_path / "other-eps"
    other_eps.mkdir()
    for path in export_hf_dir.iterdir():
        (other_eps / path.name).symlink_to(path)
    hf = json.loads((export_hf_dir / "config.json").read_text())
    (other_eps / "config.json").unlink()
    (other_eps / "config.json").write_text(json.dumps({**hf, "rms_norm_eps": 1e-6}))
    with pytest.raises(ValueError, match="--model_name 'test-llama' has norm_eps=1e-05 but .* says 1e-06"):
        convert(other_eps, model_name="test-llama", output_dir=tmp_path / "y")
    # weight files that do not fit their own config.json (here: another vocabulary size)
    (other_eps / "config.json").write_text(json.dumps({**hf, "vocab_size": hf["vocab_size"] * 2}))
    with pytest.raises(ValueError, match="weight files do not match its config.json: download it again"):
        convert(other_eps, output_dir=tmp_path / "z")


# Llama 3.1's RoPE scaling, as its config.json on the hub writes it
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip


# a RoPE scaling that lit's GPT does not compute
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}


def _tiny_hf_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, **overrides,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_hf_import_of_tied_embeddings_gives_transformers_logits(tmp_path):
    """A tied model's files hold no `lm_head.weight`; lit's model ties them too (one weight in lit_model.pth)."""
    from safetensors import safe_open

    from scripts.convert_hf_checkpoint import convert

    theirs = _tiny_hf_llama(tie_word_embeddings=True)
    theirs.save_pretrained(tmp_path / "tied")
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    convert(tmp_path / "tied", output_dir=tmp_path / "lit")
    assert Config.from_file(tmp_path / "lit" / "lit_config.json").tie_embeddings
    saved = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    assert (
        saved["lm_head.weight"].untyped_storage().data_ptr()
        == saved["transformer.wte.weight"].untyped_storage().data_ptr()
    )
    assert _max_logit_difference(theirs, tmp_path / "lit") <= 1e-5


def test_the_room_a_tied_hf_import_and_export_need_counts_its_one_weight_once(
    tmp_path, monkeypatch, export_tokenizer_dir
):
    """The free space that a conversion needs before it starts ('check_room') counted the tied head and the
    embedding, one tensor, twice: a disk with room for lit_model.pth (or model.safetensors) was refused."""
    import shutil

    from scripts.convert_hf_checkpoint import convert

    _tiny_hf_llama(tie_word_embeddings=True).save_pretrained(tmp_path / "tied")
    convert(tmp_path / "tied", output_dir=tmp_path / "lit")
    size = (tmp_path / "lit" / "lit_model.pth").stat().st_size
    embedding = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)["transformer.wte.weight"].nbytes
    assert embedding > size * 0.05  # the double count would exceed the room below
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=int(size * 1.02)))
    convert(tmp_path / "tied", output_dir=tmp_path / "lit2")
    assert (tmp_path / "lit2" / "lit_model.pth").stat().st_size == size
    # and back: the export stores the embedding once too
    from scripts.convert_lit_checkpoint import convert as export

    monkeypatch.setattr(shutil, "disk_usage", real)
    for tokenizer_file in export_tokenizer_dir.glob("tokenizer*"):  # the tiny model's files have none
        shutil.copy(tokenizer_file, tmp_path / "lit")
    export(checkpoint_dir=tmp_path / "lit", output_dir=tmp_path / "hf")
    size = (tmp_path / "hf" / "model.safetensors").stat().st_size
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=int(size * 1.02)))
    export(checkpoint_dir=tmp_path / "lit", output_dir=tmp_path / "hf2")
    assert (tmp_path / "hf2" / "model.safetensors").stat().st_size == size


def test_the_room_a_tied_training_checkpoint_needs_counts_its_one_weight_once(tmp_path):
    """convert_pretrained_checkpoint's room ('check_room') counted a tied head, written once in lit_model.pth, as a
    second tensor."""
    from lit_gpt.training.checkpoint import training_checkpoint_nbytes

    embedding, other = torch.zeros(512, 64), torch.zeros(64, 64)
    model = {"transformer.wte.weight": embedding, "lm_head.weight": embedding, "transformer.ln_f.weight": other}
    torch.save({"model": model, "step_count": 1}, tmp_path / "step-00000001.pth")
    assert training_checkpoint_nbytes(tmp_path / "step-00000001.pth", tied=True) == embedding.nbytes + other.nbytes
    assert training_checkpoint_nbytes(tmp_path / "step-00000001.pth") == 2 * embedding.nbytes + other.nbytes


def test_hf_import_of_llama3_rope_scaling_gives_transformers_logits(tmp_path):
    """Llama 3's RoPE frequency scaling, read from config.json into `rope_adjustments`."""
    from scripts.convert_hf_checkpoint import convert

    theirs = _tiny_hf_llama(rope_scaling=dict(LLAMA3_ROPE, factor=4.0, original_max_position_embeddings=16))
    theirs.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", output_dir=tmp_path / "lit")
    config = Config.from_file(tmp_path / "lit" / "lit_config.json")
    assert config.rope_adjustments == dict(
        factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=16
    )
    assert _max_logit_difference(theirs, tmp_path / "lit") <= 1e-5


@pytest.mark.parametrize("writer", ["transformers 5", "transformers 4"])
def test_hf_import_reads_rope_theta_head_dim_and_context(writer, tmp_path):
    """Llama 3's rope_theta, a head_dim other than hidden_size / num_attention_heads and the context length come from
    config.json, whichever transformers wrote it (5 keeps rope_theta in `rope_parameters`, 4 at the top level)."""
    from scripts.convert_hf_checkpoint import convert

    theirs = _tiny_hf_llama(rope_theta=500000.0, head_dim=32)
    theirs.save_pretrained(tmp_path / "hf")
    if writer == "transformers 4":
        hf = json.loads((tmp_path / "hf" / "config.json").read_text())
        hf.pop("rope_parameters")
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf, "rope_theta": 500000.0}))
    convert(tmp_path / "hf", output_dir=tmp_path / "lit")
    config = Config.from_file(tmp_path / "lit" / "lit_config.json")
    assert (config.rope_base, config.head_size, config.block_size) == (500000, 32, 32)
    assert _max_logit_difference(theirs, tmp_path / "lit") <= 1e-5


@pytest.mark.parametrize(
    ("field", "hf_config"),
    [
        ("rope_parameters.rope_type='yarn'", dict(rope_scaling=YARN_ROPE)),  # transformers 5's config.json
        ("rope_scaling=", {"rope_scaling": YARN_ROPE, "rope_theta": 500000.0}),  # as on the hub (transformers 4)
        ("rope_scaling=", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
        ("attention_bias=True", dict(attention_bias=True)),
        ("mlp_bias=True", dict(mlp_bias=True)),
        ("hidden_act='gelu'", dict(hidden_act="gelu")),
        ("rope_theta=10000.5", dict(rope_theta=10000.5)),  # lit's rope_base is an integer
    ],
)
def test_hf_import_refuses_what_lit_cannot_compute(field, hf_config, tmp_path):
    """Configs whose models lit would compute differently from transformers are refused, naming the field, before any
    weight is read."""
    from transformers import LlamaConfig

    from scripts.convert_hf_checkpoint import convert

    base = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4)
    if field.startswith("rope_scaling="):  # a hand-written config.json, which transformers 5 would rewrite
        config = {**LlamaConfig(**base).to_dict(), "rope_parameters": None, **hf_config}
    else:
        config = LlamaConfig(**base, **hf_config).to_dict()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(f"config.json has {field}")):
        convert(tmp_path / "hf", output_dir=tmp_path / "lit")
    assert not (tmp_path / "lit").exists()


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        (
            "scripts.convert_pretrained_checkpoint",
            ["--checkpoint_file", "--config_name", "--overwrite", "--group_size"],
        ),
        ("scripts.convert_lit_checkpoint", ["--checkpoint_dir", "--output_dir", "--max_shard_size", "--dtype"]),
        ("scripts.convert_hf_checkpoint", ["--checkpoint_dir", "--model_name", "--output_dir", "--dtype"]),
        ("generate.base", ["--prompt", "--max_new_tokens", "--temperature", "--top_k", "--num_samples", "--precision"]),
        ("eval.perplexity", ["--data_dir", "--num_blocks", "--block_size", "--batch_size", "--out_file"]),
    ],
)
def test_help_explains_every_flag(module, flags, capsys):
    import importlib
    import inspect

    from jsonargparse import CLI

    mod = importlib.import_module(module)
    fn = getattr(mod, "convert", None) or mod.main
    with pytest.raises(SystemExit):
        CLI(fn, as_positional=False, args=["--help"])
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out, flag
    # every flag has a description in the docstring, which jsonargparse turns into --help
    for name in inspect.signature(fn).parameters:
        assert f"        {name}: " in fn.__doc__, name


def _tutorial_tokenizer(export_tokenizer_dir: Path, out: Path) -> Path:
    """The tokenizer files of the tutorial: tokenizer.model, tokenizer.json and tokenizer_config.json."""
    from transformers import AutoTokenizer

    out.mkdir()
    (out / "tokenizer.model").write_bytes((export_tokenizer_dir / "tokenizer.model").read_bytes())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True, "legacy": False}))
    AutoTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))
    return out


@pytest.mark.slow
def test_checkpoints_of_pretrain_script_single_and_sharded(export_tokenizer_dir, tmp_path, pretrain_runs):
    """The tutorial's path on checkpoints written by pretrain/tinyllama.py itself, on one process and on two (the
    step-2 checkpoints of the runs that tests/test_pretrain.py also reads: every sequence the same, so that one
    process and two compute the same weights)."""
    from scripts.convert_pretrained_checkpoint import convert

    data = pretrain_runs["data"]
    written = {1: pretrain_runs["one"] / "step-00000002.pth", 2: pretrain_runs["two"] / "step-00000002.pth"}
    assert written[1].is_file() and written[2].is_dir() and list(written[2].glob("*.distcp"))

    tokenizer_dir = _tutorial_tokenizer(export_tokenizer_dir, tmp_path / "tokenizer")
    single, sharded = tmp_path / "lit-1", tmp_path / "lit-2"
    convert(written[1], tokenizer_dir, "micro-llama", single)  # --config_name checked against the saved config

    # continued pretraining from the converted weights (2 processes: loaded into the shards); with a learning
    # rate of 0 the first step leaves them as they were, so its checkpoint holds exactly the converted weights. It
    # runs beside the checks below (a Python start with torch and lightning per process) and is read at the end.
    out = tmp_path / "continued"
    flags = ["--initial_checkpoint_dir", str(single), "--max_steps", "1", "--learning_rate", "0", "--min_lr", "0"]
    cmd = [sys.executable, "pretrain/tinyllama.py", *PRETRAIN, "--data_dir", str(data), "--out_dir", str(out)]
    logs = tmp_path / "continued.log"
    with open(logs, "w") as log:
        continued = subprocess.Popen(cmd + flags + ["--devices", "2"], cwd=ROOT, stdout=log, stderr=log, text=True)
    try:
        _check_conversions_of_pretrain_script(written, single, sharded, tokenizer_dir, tmp_path)
        continued.wait(timeout=300)
    finally:
        if continued.poll() is None:
            continued.kill()
            continued.wait()
    output = logs.read_text()
    assert continued.returncode == 0, output[-5000:]
    assert "Initialized the weights from" in output
    convert(out / "step-00000001.pth", tokenizer_dir, "micro-llama", tmp_path / "lit-continued", group_size="2MB")
    a = torch.load(single / "lit_model.pth", weights_only=True)
    c = torch.load(tmp_path / "lit-continued" / "lit_model.pth", weights_only=True)
    for name in a:
        torch.testing.assert_close(c[name], a[name], rtol=0, atol=0, msg=name)


def _check_conversions_of_pretrain_script(written: dict, single: Path, sharded: Path, tokenizer_dir: Path, tmp_path):
    from transformers import AutoModelForCausalLM

    from scripts.convert_lit_checkpoint import convert as export
    from scripts.convert_pretrained_checkpoint import convert

    convert(written[2], tokenizer_dir, output_dir=sharded, group_size="2MB")  # the config from meta.pt
    # the five files of the tutorial, and the converter's record of them
    files = ["lit_config.json", "lit_model.pth", "lit_model.pth.sealed", "separators.json", "tokenizer.json"]
    files += ["tokenizer.model", "tokenizer_config.json"]
    assert sorted(p.name for p in single.iterdir()) == [".lit_gpt_conversion.json", *files]
    # the run's data has no prepare.json (chunks written directly): the default separators, recorded by the run
    assert torch.load(written[1], weights_only=True)["hparams"]["separators"] == {"bos": False, "eos": True}
    assert json.loads((single / "separators.json").read_text()) == {"bos": False, "eos": True}
    # the config the run trained: micro-llama with its --block_size, not the registry's
    config = Config.from_file(single / "lit_config.json")
    assert config.to_dict() == Config.from_name("micro-llama", block_size=BLOCK).to_dict()
    assert Config.from_file(sharded / "lit_config.json").to_dict() == config.to_dict()
    model = GPT(config).eval()
    model.load_state_dict(torch.load(single / "lit_model.pth", weights_only=True), strict=True)
    # the sharded checkpoint of the two-process run consolidates to the weights of the one-process run
    a = torch.load(single / "lit_model.pth", weights_only=True)
    b = torch.load(sharded / "lit_model.pth", weights_only=True)
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)

    export(sharded, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    model.load_state_dict(b)
    idx = torch.randint(0, config.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(idx).logits - model(idx)).abs().max().item() <= 1e-5
