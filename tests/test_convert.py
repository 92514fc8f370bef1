"""Checkpoint conversion on real checkpoints: Fabric training runs (one process, single file; two processes, sharded),
a real SentencePiece tokenizer, and the exports loaded by transformers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from lit_gpt.config import Config, name_to_config
from lit_gpt.model import GPT

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
# micro-llama's architecture with a vocabulary the test tokenizer fills exactly
TEST_CONFIG = dict(
    Config.from_name("micro-llama").to_dict(), name="test-llama", vocab_size=VOCAB, padded_vocab_size=None
)
TEST_CONFIG.pop("hf_config")

# Trains `test-llama` for two optimizer steps with Lightning Fabric's ModelParallelStrategy (FSDP2 over gloo, with
# activation checkpointing so that wrapper names appear) and saves it as pretrain/tinyllama.py does.
FABRIC_SCRIPT = """
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.strategies import ModelParallelStrategy

sys.path.insert(0, {root!r})
from lit_gpt.config import Config
from lit_gpt.model import GPT, init_weights
from lit_gpt.parallel import make_parallelize_fn

out, devices, sharded = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "sharded"
strategy = ModelParallelStrategy(
    parallelize_fn=make_parallelize_fn(precision="32-true", activation_checkpointing=True),
    data_parallel_size=devices, tensor_parallel_size=1, save_distributed_checkpoint=sharded,
)
fabric = L.Fabric(accelerator="cpu", devices=devices, strategy=strategy)
fabric.launch()
torch.manual_seed(0)  # same seed and same batch on every rank: one process and two compute the same weights
config = Config(**{config!r})
model = GPT(config)
init_weights(model, config.n_layer, config.n_embd)
model = fabric.setup(model)
optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
data = torch.randint(0, config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(1))
for step in range(2):
    logits = model(data[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
    fabric.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
fabric.save(out / "step-00000002.pth", {{"model": model, "optimizer": optimizer, "step_count": 2, "iter_num": 2}})
"""


def run_fabric(tmp: Path, devices: int, kind: str) -> Path:
    out = tmp / f"{kind}-{devices}"
    out.mkdir()
    script = tmp / "train.py"
    script.write_text(FABRIC_SCRIPT.format(root=str(ROOT), config=TEST_CONFIG))
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(devices), kind], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "step-00000002.pth"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A real SentencePiece model, trained the way scripts/train_tokenizer.py does (identity normalization)."""
    out = tmp_path_factory.mktemp("tokenizer")
    text = "\n".join(p.read_text() for p in sorted((ROOT / "lit_gpt").glob("*.py")))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fabric")
    return {"single": run_fabric(tmp, 1, "single"), "sharded": run_fabric(tmp, 2, "sharded")}


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    monkeypatch.setitem(name_to_config, "test-llama", TEST_CONFIG)


@pytest.fixture(scope="module")
def lit_dir(checkpoints, tokenizer_dir, tmp_path_factory) -> Path:
    from scripts.convert_pretrained_checkpoint import convert

    out = tmp_path_factory.mktemp("lit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(name_to_config, "test-llama", TEST_CONFIG)
        convert(checkpoints["single"], tokenizer_dir, "test-llama", out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def hf_dir(lit_dir, tmp_path_factory) -> Path:
    from scripts.convert_lit_checkpoint import convert

    out = tmp_path_factory.mktemp("hf") / "hf-test-llama"
    convert(lit_dir, out, max_shard_size="1MB")  # small shards: exercise the index
    return out


def test_pretrained_checkpoint_files(checkpoints, lit_dir, tokenizer_dir):
    assert checkpoints["single"].is_file()
    assert checkpoints["sharded"].is_dir() and list(checkpoints["sharded"].glob("*.distcp"))
    assert sorted(p.name for p in lit_dir.iterdir()) == ["lit_config.json", "lit_model.pth", "tokenizer.model"]
    config = Config.from_file(lit_dir / "lit_config.json")
    assert config.to_dict() == Config.from_name("test-llama").to_dict()
    state_dict = torch.load(lit_dir / "lit_model.pth", weights_only=True)
    model = GPT(config)
    model.load_state_dict(state_dict, strict=True)
    # the weights are the trained ones, not an initialization
    raw = torch.load(checkpoints["single"], weights_only=True)
    assert set(raw) >= {"model", "optimizer", "step_count"}
    for name, tensor in state_dict.items():
        assert torch.equal(tensor, raw["model"][name]), name


def test_sharded_checkpoint_converts_to_the_single_file_weights(checkpoints, tokenizer_dir, lit_dir, tmp_path):
    from scripts.convert_pretrained_checkpoint import convert

    # groups of ~100 kB: many partial DCP reads
    convert(checkpoints["sharded"], tokenizer_dir, "test-llama", tmp_path / "out", group_size="100kB")
    sharded = torch.load(tmp_path / "out" / "lit_model.pth", weights_only=True)
    single = torch.load(lit_dir / "lit_model.pth", weights_only=True)
    assert list(sharded) == list(single)
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-6, atol=1e-7, msg=name)


def test_refuses_mismatching_config_and_nonempty_output(checkpoints, tokenizer_dir, tmp_path):
    from scripts.convert_pretrained_checkpoint import convert

    with pytest.raises(
        ValueError, match=r"'lm_head.weight' has shape \(512, 128\) in the checkpoint but \(32000, 128\)"
    ):
        convert(checkpoints["sharded"], tokenizer_dir, "micro-llama", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(checkpoints["single"], tokenizer_dir, "test-llama", tmp_path / "b")
    convert(checkpoints["single"], tokenizer_dir, "test-llama", tmp_path / "b", overwrite=True)
    assert (tmp_path / "b" / "lit_model.pth").is_file()


def test_cli_refusal_names_first_mismatching_key(checkpoints, tokenizer_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/convert_pretrained_checkpoint.py", "--checkpoint_file", str(checkpoints["single"])]
        + ["--tokenizer_dir", str(tokenizer_dir), "--config_name", "micro-llama", "--output_dir", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "'lm_head.weight' has shape (512, 128) in the checkpoint but (32000, 128) in the model" in proc.stderr


def test_hf_export_loads_in_transformers_with_equal_logits(lit_dir, hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_gpt.tokenizer import Tokenizer

    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1

    theirs = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    config = Config.from_file(lit_dir / "lit_config.json")
    ours = GPT(config).eval()
    ours.load_state_dict(torch.load(lit_dir / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, VOCAB, (2, config.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (theirs(idx).logits - ours(idx)).abs().max().item()
    assert diff <= 1e-5

    hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    text = "def forward(self, x):\n    return  x ** 2  # Über 3.14"
    assert hf_tokenizer.encode(text, add_special_tokens=False) == Tokenizer(lit_dir).encode_ids(text)
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id) == (1, 2)


@pytest.mark.parametrize("fmt", ["safetensors-sharded", "bin"])
def test_round_trip_lit_hf_lit_is_bit_identical(lit_dir, hf_dir, tmp_path, fmt):
    from scripts.convert_hf_checkpoint import convert

    if fmt == "bin":  # a hub directory with a single pytorch_model.bin, as older checkpoints have
        from lit_gpt.convert import hf_checkpoint_tensors

        src = tmp_path / "bin-dir"
        src.mkdir()
        torch.save(dict(hf_checkpoint_tensors(hf_dir)), src / "pytorch_model.bin")
        for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"):
            (src / name).write_bytes((hf_dir / name).read_bytes())
    else:
        src = hf_dir
    convert(src, model_name="test-llama", output_dir=tmp_path / "back")
    original = torch.load(lit_dir / "lit_model.pth", weights_only=True)
    back = torch.load(tmp_path / "back" / "lit_model.pth", weights_only=True)
    assert list(back) == list(original)
    for name in original:
        assert back[name].dtype == original[name].dtype and torch.equal(back[name], original[name]), name
    assert json.loads((tmp_path / "back" / "lit_config.json").read_text()) == json.loads(
        (lit_dir / "lit_config.json").read_text()
    )
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (lit_dir / "tokenizer.model").read_bytes()


def test_hf_conversion_reads_config_json_without_model_name(hf_dir, tmp_path):
    from scripts.convert_hf_checkpoint import convert

    convert(hf_dir, output_dir=tmp_path)
    config = Config.from_file(tmp_path / "lit_config.json")
    expected = Config.from_name("test-llama")
    fields = ("n_layer", "n_head", "n_embd", "n_query_groups", "intermediate_size", "rope_base", "padded_vocab_size")
    for field in fields:
        assert getattr(config, field) == getattr(expected, field), field
    assert config.name == "hf-test-llama"
    with pytest.raises(ValueError, match="--model_name 'tiny-llama-1.1b' has n_layer=22"):
        convert(hf_dir, model_name="tiny-llama-1.1b", output_dir=tmp_path / "x")


def test_scripts_help():
    for script in ("convert_pretrained_checkpoint", "convert_lit_checkpoint", "convert_hf_checkpoint"):
        proc = subprocess.run(
            [sys.executable, f"scripts/{script}.py", "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert "--checkpoint_" in proc.stdout and "--output_dir" in proc.stdout
