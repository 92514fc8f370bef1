import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.loss import cross_entropy, fused_linear_cross_entropy
from lit_gpt.model import GPT


@pytest.mark.parametrize("chunk_size", [7, 64, 4096])
@pytest.mark.parametrize("ignore", [False, True])
def test_fused_linear_cross_entropy_matches_plain(chunk_size, ignore):
    torch.manual_seed(0)
    x = torch.randn(3, 20, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 20))
    if ignore:
        targets[0, :5] = -100
    expected = torch.nn.functional.cross_entropy((x @ w.t()).reshape(-1, 50), targets.reshape(-1), ignore_index=-100)
    gx, gw = torch.autograd.grad(expected * 3.0, (x, w))
    actual = fused_linear_cross_entropy(x, w, targets, chunk_size=chunk_size)
    ax, aw = torch.autograd.grad(actual * 3.0, (x, w))
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ax, gx)
    torch.testing.assert_close(aw, gw)


def test_fused_loss_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    w = torch.randn(100, 32) * 0.1
    targets = torch.randint(0, 100, (64,))
    reference = cross_entropy(x @ w.t(), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_linear_cross_entropy(x, w, targets, chunk_size=16)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - reference.item()) / reference.item() < 1e-2


def test_plain_loss_of_bf16_logits_is_computed_in_float32():
    """The logits of a bf16 model (evaluation in bf16-true, no autocast to upcast them): softmax and mean in float32."""
    torch.manual_seed(0)
    logits = (torch.randn(2, 64, 100) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 100, (2, 64))
    targets[0, :3] = -100
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    expected = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 100), targets.reshape(-1))
    assert torch.equal(loss, expected)


def test_model_loss_fused_and_plain_paths_agree():
    torch.manual_seed(0)
    config = Config.from_name("micro-llama", n_layer=2, block_size=32)
    model = GPT(config)
    idx = torch.randint(0, config.padded_vocab_size, (2, 32))
    targets = torch.randint(0, config.padded_vocab_size, (2, 32))
    model.fused_loss = True
    fused = model(idx, targets=targets)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.fused_loss = False
    plain = model(idx, targets=targets)
    plain.backward()
    torch.testing.assert_close(fused, plain)
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    torch.testing.assert_close(plain, cross_entropy(model(idx), targets))


@pytest.mark.gpu
def test_compiled_chunk_matches_eager_on_cuda():
    from lit_gpt.loss import _chunk_loss_and_grad, _chunk_loss_and_grad_compiled

    torch.manual_seed(0)
    logits = torch.randn(512, 32000, device="cuda", dtype=torch.bfloat16) * 4
    targets = torch.randint(0, 32000, (512,), device="cuda")
    scale = torch.full((512,), 1 / 500, device="cuda")
    scale[:12] = 0
    loss, grad = _chunk_loss_and_grad(logits, targets, scale, torch.float32, True)
    closs, cgrad = _chunk_loss_and_grad_compiled(logits, targets, scale, torch.float32, True)
    torch.testing.assert_close(closs, loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(cgrad.float(), grad.float(), rtol=2e-2, atol=1e-6)


def test_fused_loss_computes_no_gradients_under_no_grad():
    """Validation runs under `torch.no_grad()`: only the forward projection's FLOPs, not the two gradient products."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(100, 32, requires_grad=True)
    targets = torch.randint(0, 100, (64,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss = fused_linear_cross_entropy(x, w, targets, chunk_size=16)
    assert counter.get_total_flops() == 2 * 64 * 32 * 100
    torch.testing.assert_close(loss, cross_entropy(x @ w.t(), targets))


@pytest.mark.gpu
def test_fused_loss_bf16_on_cuda_matches_fp32_reference():
    """The CUDA path: compiled chunks, bf16 products accumulated into the float32 weight gradient."""
    torch.manual_seed(0)
    x = torch.randn(3000, 256, device="cuda", requires_grad=True)
    w = (torch.randn(32000, 256, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, 32000, (3000,), device="cuda")
    targets[:7] = -100
    expected = cross_entropy(x @ w.t(), targets)
    gx, gw = torch.autograd.grad(expected, (x, w))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        actual = fused_linear_cross_entropy(x, w, targets, chunk_size=1024)
    ax, aw = torch.autograd.grad(actual, (x, w))
    assert aw.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=1e-2, atol=0)
    for a, e in ((ax, gx), (aw, gw)):
        assert ((a - e).norm() / e.norm()).item() < 2e-2


def z_loss_reference(logits: torch.Tensor, targets: torch.Tensor, z_loss: float) -> torch.Tensor:
    """The unfused definition: mean over the counted rows of -log p(target) + z_loss * logsumexp(logits)²."""
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    valid = targets != -100
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(1, torch.where(valid, targets, 0).unsqueeze(1)).squeeze(1)
    return ((nll + z_loss * lse**2) * valid).sum() / valid.sum()


@pytest.mark.parametrize("chunk_size", [7, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_z_loss_value_and_gradient_match_the_unfused_reference(chunk_size, dtype):
    """z-loss in the fused, chunked cross-entropy (7 rows a chunk: several chunks) and in the plain one: the value and
    both gradients of an unfused logsumexp over the full logits, with ignored targets; 0 leaves the loss as it was."""
    torch.manual_seed(0)
    x = (torch.randn(3, 20, 16, dtype=dtype) * 2).requires_grad_()  # logits far from 0: log Z matters
    w = torch.randn(50, 16, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 50, (3, 20))
    targets[0, :5] = -100
    fp32 = dict(rtol=2e-6, atol=1e-6)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else fp32
    for z_loss in (1e-4, 0.1):
        expected = z_loss_reference(x @ w.t(), targets, z_loss)
        gx, gw = torch.autograd.grad(expected * 3.0, (x, w))
        for actual, path_tol in (
            (fused_linear_cross_entropy(x, w, targets, chunk_size=chunk_size, z_loss=z_loss), tol),
            (cross_entropy(x @ w.t(), targets, z_loss=z_loss), fp32),  # float32 logits whatever the input's dtype
        ):
            ax, aw = torch.autograd.grad(actual * 3.0, (x, w))
            torch.testing.assert_close(actual, expected.to(actual.dtype), **path_tol)
            torch.testing.assert_close(ax, gx, **path_tol)
            torch.testing.assert_close(aw, gw, **path_tol)
    # a z-loss of 0.1 is well above the cross-entropy's own gradient: the comparison above is not of the CE alone
    without = fused_linear_cross_entropy(x, w, targets, chunk_size=chunk_size)
    assert (expected - without).abs() > 0.1
    plain = torch.nn.functional.cross_entropy((x @ w.t()).reshape(-1, 50).float(), targets.reshape(-1))
    assert torch.equal(cross_entropy(x @ w.t(), targets, z_loss=0.0), plain)
    with torch.no_grad():  # the path without gradients: the same value
        no_grad = fused_linear_cross_entropy(x, w, targets, chunk_size=chunk_size, z_loss=0.1)
    torch.testing.assert_close(no_grad, expected.detach().to(no_grad.dtype), **tol)


def test_model_z_loss_is_the_same_on_the_fused_and_the_plain_path():
    torch.manual_seed(0)
    model = GPT(Config.from_name("micro-llama", block_size=16, n_layer=1))
    idx = torch.randint(0, 1000, (2, 16))
    targets = torch.randint(0, 1000, (2, 16))
    losses = []
    for fused in (True, False):
        model.fused_loss = fused
        losses.append(model(idx, targets=targets, z_loss=1e-2))
    torch.testing.assert_close(losses[0], losses[1])
    assert losses[0] > model(idx, targets=targets)  # log Z of a fresh model's 32000-way softmax is about 10
