"""lit-gpt's (February 2024) and litgpt's (0.5.x) users: their checkpoint folders, files and names (issue 32).

The folders under tests/fixtures/ are written by tests/fixtures/make_litgpt_fixtures.py (lit-gpt's layout with an
`incremental_save` weight file; litgpt's, written by the litgpt package) with the tokens their models generate.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.generate import generate, load_model
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training.fabric import L
from lit_gpt.weights import lit_checkpoint_files, load_lit_state_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LIT_GPT = FIXTURES / "lit-gpt-2024-02"  # lit-gpt's checkpoints/lit-tiny-llama-1.1b layout, micro-sized
LITGPT = FIXTURES / "litgpt-0.5"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
FOLDERS = pytest.mark.parametrize("folder", [LIT_GPT, LITGPT], ids=["lit-gpt-2024-02", "litgpt-0.5"])


@FOLDERS
def test_their_folders_load_and_generate_their_models_tokens(folder):
    config, model_file = lit_checkpoint_files(folder)
    assert (config.name, config.norm_class_name, config.mlp_class_name, config.head_size) == (
        "tiny-llama-micro", "RMSNorm", "LLaMAMLP", 8
    )  # fmt: skip
    model = load_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), folder)
    prompt = Tokenizer(folder).encode(EXPECTED["prompt"])  # lit-gpt's encode: bos from add_bos_token
    assert prompt.tolist() == EXPECTED["prompt_ids"]
    tokens = generate(model, prompt, max_new_tokens=len(EXPECTED["tokens"]), temperature=0.0)
    assert tokens[len(prompt) :].tolist() == EXPECTED["tokens"]


def test_litgpt_itself_generates_the_recorded_tokens():
    """The record is litgpt's: its own Config and GPT read the litgpt folder and agree with it."""
    litgpt = pytest.importorskip("litgpt")
    config = litgpt.Config.from_file(LITGPT / "model_config.yaml")
    model = litgpt.GPT(config).eval()
    model.load_state_dict(torch.load(LITGPT / "lit_model.pth", weights_only=False), strict=True)
    ids = list(EXPECTED["prompt_ids"])
    with torch.no_grad():
        for _ in EXPECTED["tokens"]:
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert ids[len(EXPECTED["prompt_ids"]) :] == EXPECTED["tokens"]


def test_an_incremental_save_file_loads_as_tensors_and_a_planted_one_runs_nothing(tmp_path):
    from lit_gpt.utils import incremental_save

    state = load_lit_state_dict(LIT_GPT / "lit_model.pth")  # protocol 5, integer keys: weights_only refuses it
    assert state.keys() == GPT(Config.from_checkpoint(LIT_GPT)).state_dict().keys()
    reference = torch.load(LIT_GPT / "lit_model.pth", weights_only=False)
    assert all(torch.equal(state[k], reference[k]) for k in reference)

    planted, marker = tmp_path / "lit_model.pth", tmp_path / "planted-pickle-ran"
    with incremental_save(planted) as saver:
        touch = functools.partial(os.system, f"touch {marker}")
        saver.save({"transformer.wte.weight": saver.store_early(torch.zeros(2)), "hook": touch})
    with pytest.raises(ValueError, match="holds pickled Python objects besides tensors"):
        load_lit_state_dict(planted)
    assert not marker.exists()


def test_config_files_of_lit_gpt_and_litgpt_are_read_and_what_we_cannot_run_is_refused_by_name(tmp_path):
    from lit_gpt.config import from_their_keys

    ours = Config.from_checkpoint(LIT_GPT)
    assert Config.from_checkpoint(LITGPT) == ours == Config.from_json(LIT_GPT / "lit_config.json")
    lit_gpt_keys = json.loads((LIT_GPT / "lit_config.json").read_text())
    refused = {
        "n_expert": 8,
        "_mlp_class": "LLaMAMoE",
        "shared_attention_norm": True,
        "lm_head_bias": True,
        "gelu_approximate": "tanh",
        "rope_condense_ratio": 4,
        "condense_ratio": 2,  # its older name
    }
    for key, value in refused.items():
        name = "rope_condense_ratio" if key == "condense_ratio" else key
        with pytest.raises(ValueError, match=f"asks for {name}={value!r}, which this project does not implement"):
            Config(**from_their_keys({**lit_gpt_keys, key: value}, "lit_config.json"))
    # norm_qk and attn_bias are ours too (Qwen3, Qwen2.5: issue 33): only what we lack is refused
    litgpt_keys = {"sliding_window_size": 16, "mlp_class_name": "GemmaMLP"}
    for key, value in litgpt_keys.items():
        (tmp_path / "model_config.yaml").write_text(
            (LITGPT / "model_config.yaml").read_text().replace(f"\n{key}: ", f"\n{key}: {json.dumps(value)}\n#")
        )
        with pytest.raises(ValueError, match=f"{key}={value!r}, which this project does not implement"):
            Config.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="has a key 'n_heads' .did you mean 'n_head'.. that neither"):
        Config(**from_their_keys({**lit_gpt_keys, "n_heads": 4}, "lit_config.json"))
    # a lit-gpt LayerNorm / parallel-residual model (GPT-NeoX style) is one this project builds
    neox = {**lit_gpt_keys, "_norm_class": "LayerNorm", "_mlp_class": "GptNeoxMLP", "parallel_residual": True}
    neox.update(bias=True, lm_head_bias=True)
    assert Config(**from_their_keys(neox, "x")).norm_class_name == "LayerNorm"
    with pytest.raises(FileNotFoundError, match="has no lit_config.json or model_config.yaml"):
        Config.from_checkpoint(tmp_path / "nothing-here")


def test_the_written_lit_config_json_is_lit_gpts(tmp_path):
    """lit-gpt's `Config(**json)` refuses a key it does not have: ours writes its keys, in its order, and our fields
    only where lit-gpt could not derive them; older files of ours (norm_class_name, head_size) are still read."""
    config = Config.from_checkpoint(LIT_GPT)
    config.to_file(tmp_path / "lit_config.json")
    assert (tmp_path / "lit_config.json").read_text() == json.dumps(
        json.loads((LIT_GPT / "lit_config.json").read_text()), indent=2
    )
    assert Config.from_file(tmp_path / "lit_config.json") == config
    (tmp_path / "ours.json").write_text(json.dumps(config.to_dict()))  # as this project wrote it before
    assert Config.from_file(tmp_path / "ours.json") == config
    wide = Config(**{**config.to_dict(), "head_size": 16})
    wide.to_file(tmp_path / "wide.json")
    assert json.loads((tmp_path / "wide.json").read_text())["head_size"] == 16
    assert Config.from_file(tmp_path / "wide.json") == wide


@FOLDERS
def test_their_folders_convert_to_hugging_face(folder, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from scripts.convert_lit_checkpoint import convert, convert_lit_checkpoint

    convert(folder, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), folder)
    x = torch.tensor([EXPECTED["prompt_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), rtol=1e-5, atol=1e-5)
    # lit-gpt's call: the HF state dict alone, in one torch file
    config_file = next(p for p in folder.iterdir() if p.name in ("lit_config.json", "model_config.yaml"))
    convert_lit_checkpoint(folder / "lit_model.pth", tmp_path / "model.bin", config_file)
    state = torch.load(tmp_path / "model.bin", weights_only=True)
    again = LlamaForCausalLM(AutoConfig.from_pretrained(tmp_path / "hf"))
    again.load_state_dict(state, strict=True)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x).logits, theirs(x).logits)


def test_convert_lit_checkpoint_takes_lit_gpts_flags(tmp_path):
    cmd = [sys.executable, "scripts/convert_lit_checkpoint.py", "--checkpoint_path", str(LIT_GPT / "lit_model.pth")]
    cmd += ["--output_path", str(tmp_path / "model.bin"), "--config_path", str(LIT_GPT / "lit_config.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(tmp_path / "model.bin", weights_only=True)
    assert "model.layers.0.self_attn.q_proj.weight" in state and "lm_head.weight" in state
    proc = subprocess.run([*cmd[:4], "--output_dir", str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "or lit-gpt's three flags" in proc.stderr, proc.stderr


def test_lit_gpts_conversion_functions(tmp_path):
    from scripts.convert_hf_checkpoint import convert_hf_checkpoint, copy_weights_hf_llama
    from scripts.convert_lit_checkpoint import convert as export
    from scripts.convert_pretrained_checkpoint import convert_checkpoint

    export(LIT_GPT, tmp_path / "hf")
    convert_hf_checkpoint(checkpoint_dir=tmp_path / "hf", dtype="float32")  # writes beside the HF files
    reference = load_lit_state_dict(LIT_GPT / "lit_model.pth")
    converted = load_lit_state_dict(tmp_path / "hf" / "lit_model.pth")
    assert converted.keys() == reference.keys() and all(torch.equal(converted[k], reference[k]) for k in reference)

    # copy_weights_hf_llama: one call per weight file; q, k and v of a layer may come in different calls
    from lit_gpt.hf import lit_to_hf_state_dict

    config = Config.from_checkpoint(LIT_GPT)
    hf = lit_to_hf_state_dict(reference, config)
    names = sorted(hf)
    qkv_weights, state_dict = {}, {}
    for half in (names[::2], names[1::2]):
        copy_weights_hf_llama(config, qkv_weights, state_dict, {n: hf[n] for n in half}, dtype=torch.float64)
    assert not qkv_weights and state_dict.keys() == reference.keys()
    assert all(torch.equal(state_dict[k], reference[k].double()) for k in reference)

    # convert_checkpoint(checkpoint_file, tokenizer_dir, config_name, output_dir) of a training checkpoint
    torch.save({"model": reference, "iter_num": 0}, tmp_path / "step-00000001.pth")
    with pytest.MonkeyPatch.context() as mp:
        from lit_gpt.config import name_to_config

        mp.setitem(name_to_config, config.name, config.to_dict())
        convert_checkpoint(tmp_path / "step-00000001.pth", LIT_GPT, config.name, tmp_path / "lit")
    assert Config.from_checkpoint(tmp_path / "lit") == config


def test_lit_gpts_model_and_utils_names(tmp_path, capsys):
    from lit_gpt import utils

    model = GPT.from_name("micro-llama", n_layer=1)
    assert isinstance(model, GPT) and model.config.n_layer == 1
    assert model.max_seq_length == model.config.block_size
    model.max_seq_length = 16
    with pytest.raises(ValueError, match="between 1 and the block size 256"):
        model.max_seq_length = 257
    with pytest.raises(ValueError, match="max_seq_length is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    # set_kv_cache(batch_size, rope_cache_length, device, dtype): the cache is max_seq_length long
    model.set_kv_cache(2, None, torch.device("cpu"), torch.float64)
    kv = model.transformer.h[0].attn.kv_cache
    assert kv.k.shape == (2, 2, 16, 32) and kv.k.dtype == torch.float64

    assert utils.num_parameters(model) == sum(p.numel() for p in model.parameters())
    model.transformer.wte.weight.requires_grad_(False)
    assert utils.num_parameters(model, requires_grad=False) == model.transformer.wte.weight.numel()
    assert utils.num_parameters(model, requires_grad=True) == utils.num_parameters(model) - 32000 * 128

    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    targets[0, :2] = -1  # lit-gpt's ignored target
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    for chunk_size in (0, 3, 128):
        torch.testing.assert_close(utils.chunked_cross_entropy(logits, targets, chunk_size=chunk_size), expected)
        pieces = list(logits.split(2, dim=1))  # a chunked lm_head
        torch.testing.assert_close(utils.chunked_cross_entropy(pieces, targets, chunk_size=chunk_size), expected)

    calls = []

    class Loader:
        def __iter__(self):
            calls.append(1)
            return iter("ab")

    iterator = utils.CycleIterator(Loader())
    assert [next(iterator) for _ in range(5)] == list("ababa") and iterator.epoch == 2 and len(calls) == 3
    assert iter(iterator) is iterator

    utils.check_valid_checkpoint_dir(LIT_GPT)
    with pytest.raises(SystemExit) as e:
        utils.check_valid_checkpoint_dir(tmp_path)
    assert e.value.code == 1 and "lit_model.pth' does not exist" in capsys.readouterr().err


def test_odd_rotary_dimensions_work_with_the_kv_cache():
    """Config(n_embd=8, n_head=2): head_size 4 and rotary_percentage 0.25 rotate a single channel, which the rotary
    cache makes two wide (as lit-gpt's does)."""
    torch.manual_seed(0)
    model = GPT(Config(n_embd=8, n_head=2, n_layer=2, vocab_size=64, padding_multiple=1, block_size=16)).eval()
    assert model.config.rope_n_elem == 1
    x = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        full = model(x)
        model.set_kv_cache(1)
        steps = [model(x[:, i : i + 1], input_pos=torch.tensor([i])) for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


ENTRY_POINTS = ["generate", "eval", "lora", "full", "initial_checkpoint_dir"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_lit_gpt_tinyllama_folder_runs_through_every_entry_point_unchanged(tmp_path, entry):
    from test_pretrain import BLOCK, _build, same_tokens

    lit = tmp_path / "lit-tiny-llama-1.1b"
    shutil.copytree(LIT_GPT, lit)
    before = _digest(lit)
    records = [{"instruction": f"What is {i}?", "output": str(i)} for i in range(20)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    cpu = ["--accelerator", "cpu", "--precision", "32-true"]
    finetune = ["--checkpoint_dir", lit, "--data", tmp_path / "data.json", "--out_dir", tmp_path / "out", *cpu]
    finetune += ["--max_steps", "1", "--global_batch_size", "2", "--micro_batch_size", "2", "--template", "plain"]
    data = _build(tmp_path / "data", same_tokens, 8) if entry in ("eval", "initial_checkpoint_dir") else None
    cmd = {
        "generate": ["generate/base.py", "--checkpoint_dir", lit, "--prompt", "def", "--max_new_tokens", "3"],
        "eval": ["eval/perplexity.py", "--checkpoint_dir", lit, "--data_dir", f"{data}/slimpajama/val",
                 "--block_size", str(BLOCK), "--num_blocks", "2"],
        "lora": ["finetune/lora.py", *finetune],
        "full": ["finetune/full.py", *finetune, "--devices", "1"],
        "initial_checkpoint_dir": [
            "pretrain/tinyllama.py", "--initial_checkpoint_dir", lit, "--block_size", str(BLOCK), *cpu,
            "--data_dir", data, "--out_dir", tmp_path / "out", "--max_steps", "1", "--global_batch_size", "2",
            "--micro_batch_size", "2", "--eval_iters", "1", "--num_workers", "1",
        ],
    }[entry]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert _digest(lit) == before  # read as it is: nothing rewritten or added
