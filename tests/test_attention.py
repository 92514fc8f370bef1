"""The attention dispatch (`lit_gpt/attention.py`): the choice and its refusals on CPU; on a Hopper GPU (`-m gpu`),
flash-attn-4 against SDPA and inside a compiled block without a graph break."""

from pathlib import Path

import pytest
import torch

from lit_gpt.attention import choose_attention, fa4, sdpa
from lit_gpt.config import Config
from lit_gpt.model import GPT, Block
from lit_gpt.training.parallel import apply_attention

ROOT = Path(__file__).resolve().parents[1]


def test_auto_takes_sdpa_on_cpu_and_fa4_is_refused_there():
    config = Config.from_name("micro-llama")
    cpu = torch.device("cpu")
    kernel, note = choose_attention("auto", config, cpu, "bf16-mixed")
    assert kernel == "sdpa" and "needs a CUDA GPU" in note, note
    assert choose_attention("sdpa", config, cpu, "32-true")[0] == "sdpa"
    with pytest.raises(ValueError, match=r"--attention fa4: flash-attn-4 needs a CUDA GPU.*--attention sdpa"):
        choose_attention("fa4", config, cpu, "bf16-mixed")
    with pytest.raises(ValueError, match="is not one of auto, sdpa, fa4"):
        choose_attention("flash", config, cpu, "bf16-mixed")


def test_sdpa_kernel_is_the_model_default_and_the_output_is_unchanged():
    torch.manual_seed(0)
    config = Config.from_name("micro-llama", n_layer=2, n_query_groups=2, block_size=64)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 64))
    before = model(idx)
    assert all(block.attn.attention is sdpa for block in model.transformer.h)
    apply_attention(model, "fa4")
    assert all(block.attn.attention is fa4 for block in model.transformer.h)
    apply_attention(model, "sdpa")
    assert torch.equal(model(idx), before)
    # the KV-cache path keeps SDPA whatever the kernel: generation on CPU works with fa4 set
    apply_attention(model, "fa4")
    model.set_kv_cache(batch_size=2)
    logits = model(idx[:, :8], input_pos=torch.arange(8))
    torch.testing.assert_close(logits, before[:, :8], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpu", ["avx2-only", "bf16"])
def test_pretrain_refuses_fa4_and_fp8_on_cpu_before_any_work(tmp_path, data_dir, capsys, monkeypatch, cpu):
    """With its error line alone, on a CPU with bf16 instructions and on one without, where a note on bf16-mixed being
    slow there used to come first."""
    from test_cli import entry_point, refusal
    from test_pretrain import simulate_cpu

    simulate_cpu(monkeypatch, tmp_path, cpu)
    # in-process through the script's own `cli(setup)` (its __main__ block): a Python start with lightning costs ~10 s
    setup = entry_point("pretrain/tinyllama.py").setup
    for flags, message in [
        (["--attention", "fa4"], "--attention fa4: flash-attn-4 needs a CUDA GPU"),
        (["--fp8", "tensorwise"], "--fp8 tensorwise: float8 training needs a CUDA GPU"),
    ]:
        args = ["--model_name", "micro-llama", "--accelerator", "cpu", "--precision", "bf16-mixed"]
        args += ["--data_dir", str(data_dir)]
        assert message in refusal(capsys, setup, *args, "--out_dir", str(tmp_path / "out"), *flags)
        assert not (tmp_path / "out").exists()


def _hopper_with_fa4():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("needs a GPU of compute capability 9.0+")
    pytest.importorskip("flash_attn.cute", reason="needs flash-attn-4 (pip install -e '.[hopper]')")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("T", [2048, 1000])
def test_fa4_output_and_gradients_match_sdpa(T):
    """FA4 and SDPA (cuDNN) in bf16 against SDPA in float32: FA4's error is of bf16's size and no larger than 2x
    SDPA's own, for the output and the three gradients (GQA: 32 query heads in 4 groups, TinyLlama's)."""
    _hopper_with_fa4()
    torch.manual_seed(0)
    B, H, G, D = 4, 32, 4, 64
    q, k, v = (torch.randn(B, T, n, D, device="cuda") for n in (H, G, G))
    grad = torch.randn(B, T, H, D, device="cuda")
    scale = D**-0.5
    results = {}
    for name, kernel, dtype in [
        ("ref", sdpa, torch.float32),
        ("sdpa", sdpa, torch.bfloat16),
        ("fa4", fa4, torch.bfloat16),
    ]:
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = kernel(*inputs, scale)
        assert out.shape == (B, T, H, D) and out.dtype == dtype
        out.backward(grad.to(dtype))
        results[name] = [out.detach(), *(t.grad for t in inputs)]
    for i, what in enumerate(["out", "dq", "dk", "dv"]):
        e_fa4, e_sdpa = _rel(results["fa4"][i], results["ref"][i]), _rel(results["sdpa"][i], results["ref"][i])
        assert e_fa4 < 1e-2 and e_fa4 <= 2 * e_sdpa + 1e-3, (what, e_fa4, e_sdpa)


@pytest.mark.gpu
def test_fa4_compiles_into_one_graph_per_block():
    _hopper_with_fa4()
    config = Config.from_name("tiny-llama-1.1b", n_layer=1)
    model = GPT(config).cuda().bfloat16()
    apply_attention(model, "fa4")
    block = model.transformer.h[0]
    assert isinstance(block, Block)
    x = torch.randn(2, 256, config.n_embd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = model.cos[:256], model.sin[:256]
    explanation = torch._dynamo.explain(block)(x, cos, sin)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    compiled = torch.compile(block)
    eager_out = block(x, cos, sin)
    out = compiled(x, cos, sin)
    out.sum().backward()
    assert _rel(out, eager_out) < 1e-2
