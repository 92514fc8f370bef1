import math

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.hf import config_to_hf, hf_to_lit_state_dict, lit_to_hf_state_dict
from lit_gpt.model import GPT, init_weights


def small_config(n_head=4, n_query_groups=2, **kw):
    return Config(
        name="test",
        block_size=32,
        vocab_size=100,
        padding_multiple=16,
        n_layer=2,
        n_head=n_head,
        n_embd=8 * n_head,
        n_query_groups=n_query_groups,
        intermediate_size=40,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP",
        **kw,
    )


def hf_model(config):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**config_to_hf(config))
    hf_config._attn_implementation = "eager"
    return LlamaForCausalLM(hf_config).eval()


@pytest.mark.parametrize(
    ("n_head", "n_query_groups", "rope_base"), [(4, 2, 10000), (4, 1, 10000), (6, 3, 500), (4, 4, 10000)]
)
def test_logits_match_transformers_llama(n_head, n_query_groups, rope_base):
    torch.manual_seed(0)
    config = small_config(n_head, n_query_groups, rope_base=rope_base, norm_eps=1e-6)
    ours = GPT(config).eval()
    init_weights(ours, config.n_layer, config.n_embd)
    for p in ours.parameters():  # perturb norm weights too, so that they are really mapped
        p.data += 0.01 * torch.randn_like(p)
    theirs = hf_model(config)
    theirs.load_state_dict(lit_to_hf_state_dict(ours.state_dict(), config), strict=True)

    idx = torch.randint(0, config.padded_vocab_size, (3, config.block_size))
    with torch.no_grad():
        expected = theirs(idx).logits
        actual = ours(idx)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-5

    # and back: HF -> lit gives the weights we started from, bit for bit
    back = hf_to_lit_state_dict(theirs.state_dict(), config)
    ours_sd = ours.state_dict()
    assert back.keys() == ours_sd.keys()
    for k in back:
        assert torch.equal(back[k], ours_sd[k]), k


def test_kv_cache_forward_equals_full_forward():
    torch.manual_seed(0)
    config = small_config(4, 2)
    model = GPT(config).eval()
    idx = torch.randint(0, config.padded_vocab_size, (2, 12))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2)
        # a prompt of 5 tokens, then one token at a time
        steps = [model(idx[:, :5], torch.arange(0, 5))]
        for t in range(5, 12):
            steps.append(model(idx[:, t : t + 1], torch.tensor([t])))
    cached = torch.cat(steps, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_kv_cache_required_for_input_pos():
    model = GPT(small_config())
    with pytest.raises(TypeError, match="set_kv_cache"):
        model(torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))


def test_state_dict_names_are_lit_gpts():
    config = small_config()
    names = set(GPT(config).state_dict())
    expected = {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(config.n_layer):
        for n in ("norm_1", "attn.attn", "attn.proj", "norm_2", "mlp.fc_1", "mlp.fc_2", "mlp.proj"):
            expected.add(f"transformer.h.{i}.{n}.weight")
    assert names == expected


def test_init_weights_tinyllama_scheme():
    torch.manual_seed(0)
    config = small_config(n_head=4, n_query_groups=2)
    config.n_embd = 256
    config.head_size = 64
    config.intermediate_size = 512
    config.n_layer = 4
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    std = math.sqrt(2 / 5 / config.n_embd)
    assert model.transformer.wte.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.transformer.h[0].mlp.fc_1.weight.std().item() == pytest.approx(std, rel=0.05)
    out_std = 1 / math.sqrt(config.n_embd) / config.n_layer
    assert model.transformer.h[0].attn.proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert model.transformer.h[1].mlp.proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert torch.all(model.transformer.h[0].norm_1.weight == 1)


def test_meta_device_init_rebuilds_rope_cache():
    config = small_config()
    reference = GPT(config)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    torch.testing.assert_close(model.cos, reference.cos)
    torch.testing.assert_close(model.sin, reference.sin)


def test_partial_rotary_and_neox_mlp_match_litgpt():
    """The GPT-NeoX options (partial rotary, parallel residual, LayerNorm, GELU MLP, biases) compute litgpt's logits."""
    litgpt_config = pytest.importorskip("litgpt.config")
    from litgpt.model import GPT as LitGPT

    fields = dict(name="t", block_size=16, vocab_size=50, padding_multiple=8, n_layer=2, n_head=2, n_embd=16)
    fields.update(rotary_percentage=0.5, parallel_residual=True, bias=True)
    fields.update(norm_class_name="LayerNorm", mlp_class_name="GptNeoxMLP")
    config = Config(**fields)
    torch.manual_seed(0)
    ours = GPT(config).eval()
    for p in ours.parameters():  # nonzero biases, non-unit norm weights
        p.data += 0.1 * torch.randn_like(p)
    theirs = LitGPT(litgpt_config.Config(**fields, lm_head_bias=True)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    idx = torch.randint(0, config.padded_vocab_size, (2, 16))
    with torch.no_grad():
        actual = ours(idx)
        torch.testing.assert_close(actual, theirs(idx), atol=1e-5, rtol=0)
    assert actual.shape == (2, 16, 56)
    # and back: litgpt's `attn.qkv` weight and bias, converted on load
    again = GPT(config).eval()
    again.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(idx), actual, atol=0, rtol=0)


def test_checkpoints_move_between_litgpt_and_us():
    """A state dict of litgpt's GPT loads into ours (strict) and gives the same logits, and the reverse.

    Our layout is lit-gpt's (`attn.attn`, q/k/v interleaved per query group); litgpt >= 0.5 renamed it `attn.qkv`
    with [q, k, v] blocks, and each side converts the other's on load."""
    litgpt_config = pytest.importorskip("litgpt.config")
    from litgpt.model import GPT as LitGPT

    config = Config.from_name("micro-llama", n_layer=2, block_size=64)
    theirs_config = litgpt_config.Config.from_name("tiny-llama-1.1b")
    for field in ("n_layer", "n_head", "n_embd", "head_size", "n_query_groups", "intermediate_size", "block_size"):
        setattr(theirs_config, field, getattr(config, field))
    theirs_config.__post_init__()
    torch.manual_seed(0)
    theirs = LitGPT(theirs_config).eval()
    ours = GPT(config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    idx = torch.randint(0, config.padded_vocab_size, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx), atol=1e-5, rtol=0)
    init_weights(ours, config.n_layer, config.n_embd)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx), ours(idx), atol=1e-5, rtol=0)


def test_swiglu_linear_matches_autograd_and_saves_no_product():
    from lit_gpt.model import swiglu_linear

    torch.manual_seed(0)
    a = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 40, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = torch.nn.functional.linear(torch.nn.functional.silu(a) * b, w)
    expected_grads = torch.autograd.grad(expected, (a, b, w), g)

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        actual = swiglu_linear(a, b, w)
    actual_grads = torch.autograd.grad(actual, (a, b, w), g)
    torch.testing.assert_close(actual, expected)
    for x, y in zip(actual_grads, expected_grads):
        torch.testing.assert_close(x, y)
    assert saved == [a.shape, b.shape, w.shape]  # a, b and the weight: not silu(a) * b


@pytest.mark.parametrize("compile", [False, True])
def test_swiglu_linear_under_bf16_autocast(compile):
    from lit_gpt.model import swiglu_linear

    torch.manual_seed(0)
    a = torch.randn(64, 40, requires_grad=True)
    b = torch.randn(64, 40, requires_grad=True)
    w = torch.randn(8, 40, requires_grad=True)
    expected = torch.nn.functional.linear(torch.nn.functional.silu(a) * b, w)
    expected_grads = torch.autograd.grad(expected.sum(), (a, b, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = (torch.compile(swiglu_linear) if compile else swiglu_linear)(a, b, w)
    assert actual.dtype == torch.bfloat16
    actual_grads = torch.autograd.grad(actual.float().sum(), (a, b, w))
    torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=5e-2)
    for x, y in zip(actual_grads, expected_grads):
        assert x.dtype == y.dtype == torch.float32
        torch.testing.assert_close(x, y, rtol=2e-2, atol=5e-2)


def test_attention_output_reaches_proj_without_a_copy():
    """q, k, v live as (B, T, heads, head_size): attention writes its output in that layout and `proj` reads it as
    (B, T, n_embd) without a copy, so backward keeps one tensor of attention output, not two."""
    from lit_gpt.model import CausalSelfAttention, build_rope_cache

    config = Config.from_name("micro-llama")
    attn = CausalSelfAttention(config)
    B, T = 2, 16
    x = torch.randn(B, T, config.n_embd, requires_grad=True)
    cos, sin = build_rope_cache(T, config.rope_n_elem)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        attn(x, cos, sin)
    full_size = [t for t in saved if t.numel() == B * T * config.n_embd]
    # the block input (for qkv's weight gradient), q, the attention output: three storages
    assert len({t.untyped_storage().data_ptr() for t in full_size}) == 3
    # and no saved view keeps a larger buffer alive (k or v as views of the fused qkv output would)
    inputs = {p.data_ptr() for p in attn.parameters()} | {cos.data_ptr(), sin.data_ptr()}
    for t in saved:
        if t.data_ptr() not in inputs:
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), t.shape


@pytest.mark.gpu
def test_compiled_block_saves_only_what_backward_needs_on_cuda():
    """Per token, a compiled tiny-llama block keeps for backward: its input, both norm outputs, q, k, v, the attention
    output, the attention residual (n_embd or less each) and the two MLP inputs of SwiGLU (intermediate_size each),
    in bf16, plus float32 norm and softmax statistics. Not the SwiGLU product, not a second copy of the attention
    output."""
    from lit_gpt.model import Block, build_rope_cache

    config = Config.from_name("tiny-llama-1.1b")
    block = Block(config).cuda().to(torch.bfloat16)
    block.compile()
    B, T = 2, 512
    x = torch.randn(B, T, config.n_embd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = build_rope_cache(T, config.rope_n_elem, device="cuda")
    inputs = {p.data_ptr() for p in block.parameters()} | {cos.data_ptr(), sin.data_ptr()}  # not activations
    saved = []
    for _ in range(2):  # the second call runs the compiled code
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = block(x, cos, sin)
        y.sum().backward()
    kept = [t.untyped_storage() for t in saved if t.data_ptr() not in inputs]
    storages = {s.data_ptr(): s.nbytes() for s in kept}
    per_token = sum(storages.values()) / (B * T)  # whole storages: a saved view keeps its whole buffer alive
    C, kv = config.n_embd, config.n_query_groups * config.head_size
    expected = 2 * (6 * C + 2 * kv + 2 * config.intermediate_size) + 4 * (2 + config.n_head)
    assert per_token <= expected + 64, (per_token, expected)


def test_training_forward_equals_inference_forward():
    """With grad enabled the MLP takes `swiglu_linear` (training), without it `proj(silu(fc_1) * fc_2)` (evaluation,
    generation): both paths compute the same logits and the same loss."""
    torch.manual_seed(0)
    config = small_config()
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    idx = torch.randint(0, config.padded_vocab_size, (2, 16))
    with torch.no_grad():
        expected = model(idx)
    actual = model(idx)
    assert actual.requires_grad
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_rmsnorm_computes_in_float32():
    """A bf16 input is normalized in float32 and rounded once: bit for bit the float32 result cast to bf16."""
    from lit_gpt.model import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(256)
    norm.weight.data += 0.1 * torch.randn(256)
    x = (torch.randn(8, 256) * 3).to(torch.bfloat16)
    actual = norm(x)
    assert actual.dtype == torch.bfloat16
    assert torch.equal(actual, norm(x.float()).to(torch.bfloat16))


@pytest.mark.parametrize("mode", ["bf16-true", "bf16-mixed"])
def test_bf16_forward_and_kv_cache(mode):
    """bf16 weights with the float32 rope cache (FSDP's mixed precision casts parameters, not buffers), and a float32
    model under bf16 autocast: the full forward is close to the float32 one, the KV-cache forward (generation) to the
    full one."""
    torch.manual_seed(0)
    config = small_config()
    reference = GPT(config).eval()
    init_weights(reference, config.n_layer, config.n_embd)
    idx = torch.randint(0, config.padded_vocab_size, (2, 12))
    with torch.no_grad():
        expected = reference(idx)
    model = GPT(config).eval()
    model.load_state_dict(reference.state_dict())
    if mode == "bf16-true":
        model = model.to(torch.bfloat16)
        model.reset_parameters()  # the rope cache in float32 again
        assert model.cos.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-mixed"):
        full = model(idx)
        model.set_kv_cache(batch_size=2)
        steps = [model(idx[:, :5], torch.arange(0, 5))]
        for t in range(5, 12):
            steps.append(model(idx[:, t : t + 1], torch.tensor([t])))
    assert full.dtype == torch.bfloat16
    torch.testing.assert_close(full.float(), expected, rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full.float(), rtol=0, atol=0.05)
