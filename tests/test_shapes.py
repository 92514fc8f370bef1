"""The registry's Llama 3.2, SmolLM2, Qwen2.5, Qwen3 and OLMo 2 entries against transformers' own models, at reduced
depth and width with every switch of the entry kept: logits, loss and gradients within 1e-5 (float32, CPU); their
Hugging Face config.json files read into the registry's entries, and what lit's GPT does not compute refused by name."""

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.hf import config_from_hf, config_to_hf, hf_model_type, lit_to_hf_state_dict, read_model_config
from lit_gpt.model import GPT, init_weights

transformers = pytest.importorskip("transformers")

NEW_SHAPES = (
    "Llama-3.2-1B", "Llama-3.2-3B", "SmolLM2-135M", "SmolLM2-360M", "SmolLM2-1.7B", "Qwen2.5-0.5B", "Qwen3-0.6B",
    "Qwen3-1.7B", "OLMo-2-0425-1B",
)  # fmt: skip
# config.json of each family as published on the Hugging Face hub (copied from the model pages named in
# lit_gpt/config.py)
HF_CONFIGS = Path(__file__).parent / "fixtures" / "hf_configs"


def reduced(name: str) -> Config:
    """`name` at 2 layers and small widths, keeping its switches, its grouping of heads and (Qwen3) a head_size that
    is not n_embd / n_head."""
    full = Config.from_name(name)
    head_size = 16 if full.head_size != full.n_embd // full.n_head else 8
    n_head = full.n_head // full.n_query_groups * 2
    n_query_groups = 2
    overrides = dict(
        n_layer=2, n_head=n_head, n_query_groups=n_query_groups, n_embd=n_head * 8, head_size=head_size,
        intermediate_size=48, vocab_size=128, padded_vocab_size=128, block_size=64,
    )  # fmt: skip
    if full.rope_adjustments:  # the small head has a frequency kept, one interpolated, two scaled
        overrides["rope_adjustments"] = dict(full.rope_adjustments, original_max_seq_len=256)
    return Config.from_name(name, **overrides)


def hf_model(config: Config):
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config))
    hf_config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)


@pytest.mark.parametrize("name", NEW_SHAPES)
def test_new_shape_matches_transformers(name):
    config = reduced(name)
    torch.manual_seed(0)
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    for p in model.parameters():  # norms away from 1, so that a misplaced norm weight shows
        p.data.add_(torch.randn_like(p) * 0.1)
    ours = model.state_dict()
    if config.tie_embeddings:
        assert model.lm_head.weight is model.transformer.wte.weight
    hf = hf_model(config)
    expected_type = {"Qwen3": "qwen3", "Qwen2.5": "qwen2", "OLMo-2": "olmo2"}
    assert hf.config.model_type == next((v for k, v in expected_type.items() if name.startswith(k)), "llama")
    assert hf_model_type(config) == hf.config.model_type
    missing, unexpected = hf.load_state_dict(lit_to_hf_state_dict(ours, config), strict=False)
    assert not unexpected
    assert missing == (["lm_head.weight"] if config.tie_embeddings else [])  # tied: stored once, as the embedding
    idx = torch.randint(0, config.vocab_size, (2, 40))
    targets = torch.randint(0, config.vocab_size, (2, 40))
    model.fused_loss = False
    torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)
    loss = model(idx, targets=targets)
    hf_loss = torch.nn.functional.cross_entropy(hf(idx).logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    hf_loss.backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    ours_grads = {n: p.grad for n, p in model.named_parameters()}
    for hf_name, grad in lit_to_hf_state_dict(ours_grads, config).items():
        torch.testing.assert_close(grad, hf_grads[hf_name], atol=1e-5, rtol=1e-5, msg=hf_name)
    # the fused loss (one weight for the tied head) gives the same loss
    model.fused_loss = True
    torch.testing.assert_close(model(idx, targets=targets), loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Qwen2.5-0.5B", "Qwen3-0.6B", "OLMo-2-0425-1B"])
def test_new_shape_round_trips_through_transformers(name, tmp_path):
    """lit -> HF files (saved by transformers, the tied head stored once) -> lit: the same bytes, the same logits."""
    from lit_gpt.hf import hf_to_lit_state_dict

    config = reduced(name)
    torch.manual_seed(0)
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    hf = hf_model(config)
    hf.load_state_dict(lit_to_hf_state_dict(model.state_dict(), config), strict=False)
    hf.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32)
    idx = torch.randint(0, config.vocab_size, (1, 24))
    torch.testing.assert_close(loaded(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    back = hf_to_lit_state_dict(loaded.state_dict(), config)
    ours = model.state_dict()
    if config.tie_embeddings:
        assert "lm_head.weight" not in back
        back["lm_head.weight"] = back["transformer.wte.weight"]
    assert back.keys() == ours.keys()
    for key, tensor in ours.items():
        assert torch.equal(back[key], tensor), key


def _without_hub_name(config: Config) -> dict:
    return {**config.to_dict(), "hf_config": {}}


@pytest.mark.parametrize("name", sorted(p.name for p in HF_CONFIGS.iterdir()))
def test_hub_config_json_reads_as_the_registry_entry(name):
    """`--model_config <model>/config.json`, as the hub has it for each family: the registry's entry of that name."""
    assert _without_hub_name(read_model_config(HF_CONFIGS / name / "config.json")) == _without_hub_name(
        Config.from_name(name)
    )


@pytest.mark.parametrize("name", NEW_SHAPES)
def test_config_json_that_transformers_writes_reads_as_the_registry_entry(name, tmp_path):
    """Each new entry's config, built as transformers' own config class and saved by it (its keys and defaults, in
    transformers 5's layout), reads back into the same entry."""
    entry = Config.from_name(name)
    hf = transformers.AutoConfig.for_model(**config_to_hf(entry))
    hf.save_pretrained(tmp_path / name)
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["model_type"] == hf_model_type(entry)
    assert _without_hub_name(read_model_config(tmp_path / name / "config.json")) == _without_hub_name(entry)


@pytest.mark.parametrize(
    ("family", "field", "value"),
    [
        ("Qwen2.5-0.5B", "use_sliding_window", True),
        ("Qwen3-0.6B", "use_sliding_window", True),
        ("Qwen3-0.6B", "layer_types", ["sliding_attention"] * 28),
        ("Llama-3.2-1B", "attention_dropout", 0.1),
        ("Llama-3.2-1B", "rope_scaling", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}),
        ("SmolLM2-135M", "rope_scaling", {"type": "linear", "factor": 2.0}),
        ("SmolLM2-135M", "rope_interleaved", True),
        ("Qwen3-0.6B", "attention_bias", True),  # Qwen3's bias is on o_proj too
        ("OLMo-2-0425-1B", "clip_qkv", 8.0),
        ("OLMo-2-0425-1B", "hidden_act", "gelu"),
        ("Llama-3.2-1B", "mlp_bias", True),
        ("Qwen3-0.6B", "num_experts", 128),
        ("Llama-3.2-1B", "rope_theta", 500000.5),  # lit's rope_base is an integer
        ("Qwen2.5-0.5B", "use_mrope", True),
        ("Llama-3.2-1B", "attn_logit_softcapping", 50.0),  # a key this reader does not know
    ],
)
def test_what_lit_does_not_compute_is_refused_by_name(family, field, value, tmp_path):
    hf = json.loads((HF_CONFIGS / family / "config.json").read_text())
    hf[field] = value
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=f"config.json has {field}="):
        read_model_config(tmp_path / "config.json")
    if field not in ("attn_logit_softcapping", "rope_theta"):  # a known key at transformers' default is not refused
        config_from_hf({**hf, field: None})
        config_from_hf({k: v for k, v in hf.items() if k != field})


@pytest.mark.parametrize("model_type", ["qwen3_moe", "gemma2", "mistral"])
def test_another_family_is_refused_by_its_model_type(model_type, tmp_path):
    hf = {**json.loads((HF_CONFIGS / "Qwen3-0.6B" / "config.json").read_text()), "model_type": model_type}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=f"has model_type='{model_type}'; lit's GPT computes the families llama"):
        read_model_config(tmp_path / "config.json")


# each family's switch, in its smallest entry: tied embeddings and Llama 3's RoPE, biases on q/k/v, QK-norm per head,
# QK-norm over the projections with the norms after attention and MLP
FAMILIES = ("Llama-3.2-1B", "Qwen2.5-0.5B", "Qwen3-0.6B", "OLMo-2-0425-1B")


def write_reduced_config_json(name: str, folder: Path) -> Path:
    """The reduced shape of `name` as a Hugging Face config.json (as transformers writes it), with a 512-token
    vocabulary: what `--model_config` reads."""
    config = reduced(name)
    config = Config(**{**config.to_dict(), "vocab_size": 512, "padded_vocab_size": 512})
    folder.mkdir(parents=True)
    transformers.AutoConfig.for_model(**config_to_hf(config)).save_pretrained(folder)
    return folder / "config.json"


def pretrain_command(out_dir: Path, data_dir: Path, model_config: Path, *flags: str) -> list:
    from test_pretrain import COMMON, SCRIPT

    common = list(COMMON)
    del common[common.index("--model_name") : common.index("--model_name") + 2]
    return [sys.executable, str(SCRIPT), *common, "--model_config", str(model_config), "--data_dir", str(data_dir),
            "--out_dir", str(out_dir), "--devices", "1", *flags]  # fmt: skip


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    from test_pretrain import _build, same_tokens

    return _build(tmp_path_factory.mktemp("tokens"), same_tokens, 24)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_pretrains_from_model_config_and_resumes_bit_identically_after_sigkill(name, tmp_path, tokens_dir):
    """`--model_config` with a config.json of the family; a run SIGKILLed after its step-2 checkpoint and resumed ends
    with the weights (and losses) of the run that was not interrupted."""
    from test_pretrain import _env, metrics, model_weights

    model_config = write_reduced_config_json(name, tmp_path / name)
    flags = ["--max_steps", "4", "--save_interval", "2", "--eval_interval", "100", "--max_tokens", str(4 * 8 * 32)]
    full = tmp_path / "full"
    proc = subprocess.run(pretrain_command(full, tokens_dir, model_config, *flags), capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(full / "step-00000004.pth", weights_only=True)["hparams"]
    assert saved["model_name"] == name
    assert Config(**saved["model_config"]) == Config(**{**read_model_config(model_config).to_dict(), "block_size": 32})

    killed = tmp_path / "killed"
    cmd = pretrain_command(killed, tokens_dir, model_config, *flags)
    kill = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    try:
        for line in kill.stdout:
            if line.startswith("step 3/4"):  # after the step-2 checkpoint, before the end
                kill.send_signal(signal.SIGKILL)
                break
        kill.wait(timeout=60)
    finally:
        if kill.poll() is None:
            kill.kill()
            kill.wait(timeout=60)
    assert kill.returncode == -signal.SIGKILL
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-00000002.pth"]
    proc = subprocess.run([*cmd, "--resume", "auto"], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0 and "Resumed at step 2" in proc.stdout, proc.stderr[-3000:]
    assert all(metrics(killed)[step] == metrics(full)[step] for step in (3, 4))
    final, resumed = model_weights(full / "step-00000004.pth"), model_weights(killed / "step-00000004.pth")
    assert final.keys() == resumed.keys()
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_two_process_fsdp2_run_of_a_tied_shape_matches_one_process_and_keeps_the_head_one_weight(tmp_path, tokens_dir):
    """Llama 3.2's tied head through FSDP2 on 2 CPU processes (gloo): the losses of one process with the same global
    batch; the head is the embedding in every checkpoint (trained as one weight: lost once to the meta device's
    `to_empty`), and after a resume; the lit checkpoint and the Hugging Face export store it once."""
    from prepared_data import load_script
    from test_pretrain import SHARDED_FLAGS, _env, metrics, model_weights

    model_config = write_reduced_config_json("Llama-3.2-1B", tmp_path / "llama")
    for devices in (1, 2):
        cmd = pretrain_command(tmp_path / f"p{devices}", tokens_dir, model_config, *SHARDED_FLAGS)
        cmd[cmd.index("--devices") + 1] = str(devices)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = tmp_path / "p1", tmp_path / "p2"
    for key in ("loss", "grad_norm", "val_loss"):
        expected, actual = metrics(one, key), metrics(two, key)
        assert expected.keys() == actual.keys() and expected, key
        assert all(actual[s] == pytest.approx(expected[s], rel=1e-4) for s in expected), (key, expected, actual)
    sharded = two / "step-00000003.pth"
    assert sharded.is_dir()
    weights_one, weights_two = model_weights(one / "step-00000003.pth"), model_weights(sharded)
    for weights in (weights_one, weights_two):
        assert torch.equal(weights["lm_head.weight"], weights["transformer.wte.weight"])
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-5)

    # resumed on 2 processes from the sharded step 2: step 3 bit for bit, the head still the embedding
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "step-00000003.pth")
    cmd = pretrain_command(resumed, tokens_dir, model_config, *SHARDED_FLAGS, "--resume", "auto")
    cmd[cmd.index("--devices") + 1] = "2"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0 and "Resumed at step 2" in proc.stdout, proc.stderr[-3000:]
    weights_resumed = model_weights(resumed / "step-00000003.pth")
    assert all(torch.equal(weights_resumed[name], tensor) for name, tensor in weights_two.items())

    # the lit checkpoint holds one tensor under both names (written once), the export one embed_tokens.weight
    tokenizer = tmp_path / "bpe"
    with contextlib.redirect_stdout(io.StringIO()):
        load_script("train_tokenizer").train(input=str(Path(__file__).parent / "tokenizer_corpus.txt"),
                                             output_dir=tokenizer, vocab_size=512, kind="bpe")  # fmt: skip
        load_script("convert_pretrained_checkpoint").convert(sharded, tokenizer, output_dir=tmp_path / "lit")
        load_script("convert_lit_checkpoint").convert(tmp_path / "lit", tmp_path / "hf")
    lit = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    head, embedding = lit["lm_head.weight"], lit["transformer.wte.weight"]
    assert head.untyped_storage().data_ptr() == embedding.untyped_storage().data_ptr()
    assert (tmp_path / "lit" / "lit_model.pth").stat().st_size < sum(t.nbytes for t in lit.values()) - head.nbytes / 2
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in exported and torch.equal(exported["model.embed_tokens.weight"], embedding)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    ours = GPT(read_model_config(model_config))
    ours.load_state_dict(lit)
    ours.fused_loss = False
    idx = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[..., :512], atol=1e-5, rtol=1e-5)


def test_a_tied_checkpoint_whose_head_was_trained_apart_is_not_written_as_tied(tmp_path):
    """Weights of a tied shape with lm_head.weight apart from the embedding (what pretraining saved while the tie was
    lost): written tied, the head would silently become the embedding."""
    from lit_gpt.weights import save_lit_checkpoint

    config = reduced("Qwen3-0.6B")
    state_dict = dict(GPT(config).state_dict())
    state_dict["lm_head.weight"] = state_dict["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight and transformer.wte.weight differ in these weights"):
        save_lit_checkpoint(state_dict, config, tmp_path)
    assert not (tmp_path / "lit_model.pth").exists()


def test_model_config_that_asks_for_what_lit_does_not_compute_is_one_error_line(tmp_path, tokens_dir, capsys):
    from test_cli import refusal
    from test_pretrain import load_script

    model_config = write_reduced_config_json("Qwen3-0.6B", tmp_path / "qwen")
    hf = json.loads(model_config.read_text())
    model_config.write_text(json.dumps({**hf, "use_sliding_window": True, "sliding_window": 16}))
    args = pretrain_command(tmp_path / "out", tokens_dir, model_config)[2:]
    line = refusal(capsys, load_script().setup, *args)
    assert f"{model_config} has use_sliding_window=True, which lit's GPT does not compute" in line
    line = refusal(capsys, load_script().setup, *args, "--model_name", "micro-llama")
    assert "--model_name micro-llama and --model_config" in line and "both name the model; pass one" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", FAMILIES)
def test_convert_hf_checkpoint_reads_each_family(name, tmp_path):
    """scripts/convert_hf_checkpoint.py on a transformers model of each family (random weights, norms away from 1):
    the lit checkpoint it writes is the registry entry's architecture and gives transformers' logits."""
    from scripts.convert_hf_checkpoint import convert

    config = reduced(name)
    torch.manual_seed(0)
    hf = hf_model(config)
    for p in hf.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / name)
    convert(tmp_path / name, output_dir=tmp_path / "lit")
    converted = Config.from_file(tmp_path / "lit" / "lit_config.json")
    assert _without_hub_name(converted) == _without_hub_name(config)
    ours = GPT(converted)
    ours.load_state_dict(torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True), strict=True)
    ours.fused_loss = False
    idx = torch.randint(0, config.vocab_size, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_benchmark_measures_a_model_config(tmp_path):
    """dev/benchmark.py --model_config: the step of the config.json's model (OLMo 2's post-norm reduced shape, its
    512-token vocabulary: a first loss near ln 512)."""
    import math

    from prepared_data import load_script

    model_config = write_reduced_config_json("OLMo-2-0425-1B", tmp_path / "micro-olmo2")
    load_script("benchmark", "dev").main(model_config=model_config, block_size=32, micro_batch_sizes=[2], steps=1,
                                         warmup=1, precision="32-true", out_dir=tmp_path / "out")  # fmt: skip
    (result,) = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert result["tokens_per_s"] > 0 and abs(result["loss"] - math.log(512)) < 1.0
