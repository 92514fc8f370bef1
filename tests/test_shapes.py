"""The registry's Llama 3.2, SmolLM2, Qwen3 and OLMo 2 entries against transformers' own models, at reduced depth and
width with every switch of the entry kept: logits, loss and gradients within 1e-5 (float32, CPU)."""

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.hf import config_to_hf, hf_model_type, lit_to_hf_state_dict
from lit_gpt.model import GPT, init_weights

transformers = pytest.importorskip("transformers")

NEW_SHAPES = (
    "Llama-3.2-1B", "Llama-3.2-3B", "SmolLM2-135M", "SmolLM2-360M", "SmolLM2-1.7B", "Qwen3-0.6B", "Qwen3-1.7B",
    "OLMo-2-0425-1B",
)  # fmt: skip


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
    expected_type = {"Qwen3": "qwen3", "OLMo-2": "olmo2"}
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


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Qwen3-0.6B", "OLMo-2-0425-1B"])
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
