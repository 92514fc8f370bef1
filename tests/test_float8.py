"""Float8 training (`lit_gpt/training/float8.py`). On CPU, torchao's float8 linear layers in emulation (real float8
rounding of every operand, products in float32) through the real FSDP2 step: a float8 run saves ordinary weights, in a
single file and in a sharded directory, that load without torchao into a plain model, and a run resumes from them with
or without float8. On an sm89+ GPU (`-m gpu`): the real script with `--fp8 tensorwise`, its loss against bf16's, and
its resumption without `--fp8`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import same_data_dir  # noqa: F401  (the GPU test's fixture)

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys
from pathlib import Path
import torch
from lit_gpt.training.fabric import L, ModelParallelStrategy
from lit_gpt.training.checkpoint import CheckpointSaver, load_checkpoint, save_checkpoint
from lit_gpt.config import Config
from lit_gpt.training.float8 import precompute_scales_after_step
from lit_gpt.model import GPT, init_weights
from lit_gpt.training.parallel import make_parallelize_fn
from lit_gpt.training.step import training_step

out = Path(sys.argv[1])
# micro-llama at half its width: on CPU every float8 product is torch._scaled_mm's reference kernel, whose cost is
# per multiply-add (a 128-wide model spent ~80% of this test in the tokenwise runs' products)
config = Config.from_name("micro-llama", n_layer=2, block_size=32, n_embd=64, intermediate_size=176)
strategy = ModelParallelStrategy(make_parallelize_fn(precision="32-true"), data_parallel_size=1, tensor_parallel_size=1)
fabric = L.Fabric(accelerator="cpu", devices=1, strategy=strategy, precision="32-true")
fabric.launch()
batches = torch.randint(0, config.vocab_size, (5, 4, 33), generator=torch.Generator().manual_seed(1))
report = {}

def build(fp8):
    fabric.strategy._parallelize_fn = make_parallelize_fn(precision="32-true", fp8=fp8, fp8_emulate=True)
    torch.manual_seed(0)
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    model = fabric.setup(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    if fp8:
        precompute_scales_after_step(optimizer, model)
    optimizer = fabric.setup_optimizers(optimizer)
    hparams = {"model_config": config.to_dict(), "world_size": 1}
    return model, optimizer, {"model": model, "optimizer": optimizer, "hparams": hparams, "step_count": 0}

def train(name, fp8, steps, resume=None, save=None, sharded=False, background=False):
    model, optimizer, state = build(fp8)
    report[name + "_float8_layers"] = sum(
        type(m).__name__ in ("Float8Linear", "TokenwiseFloat8Linear") for m in model.modules()
    )
    if resume:
        load_checkpoint(fabric, out / resume, state, config.to_dict())
    losses = []
    for _ in range(steps):
        losses.append(training_step(fabric, model, optimizer, [batches[state["step_count"]]], 1.0)[0].item())
        state["step_count"] += 1
    report[name] = losses
    if save:
        fabric.strategy._save_distributed_checkpoint = sharded
        if background:  # copied to CPU memory and written by a thread (--async_save)
            saver = CheckpointSaver(fabric, out, None, background=True)
            saver.save(out / save, state)
            saver.wait()
        else:
            save_checkpoint(fabric, out / save, state)

train("fp8", "tensorwise", 3, save="fp8.pth")
train("fp8_sharded", "tensorwise", 3, save="fp8-sharded.pth", sharded=True)
train("fp8_background", "tensorwise", 3, save="fp8-background.pth", background=True)
train("plain", None, 5)
train("resumed_plain", None, 2, resume="fp8.pth")
train("resumed_fp8", "tensorwise", 2, resume="fp8.pth")
train("resumed_from_sharded", None, 2, resume="fp8-sharded.pth")
train("rowwise", "rowwise", 3)
train("tokenwise", "tokenwise", 3, save="tokenwise.pth")
train("resumed_tokenwise", "tokenwise", 2, resume="fp8.pth")
(out / "report.json").write_text(json.dumps(report))
"""

# loads the weights of each checkpoint named where torchao cannot be imported, with weights_only=True
READER = r"""
import sys
sys.modules["torchao"] = None  # any unpickling that needs torchao fails
import torch
from lit_gpt.config import Config
from lit_gpt.training.checkpoint import training_checkpoint_tensors
from lit_gpt.model import GPT
from pathlib import Path
for path in sys.argv[1:]:
    weights = dict(training_checkpoint_tensors(Path(path)))
    if Path(path).is_file():  # all of it, the optimizer's moments too
        torch.load(path, weights_only=True)
    assert {type(v) for v in weights.values()} == {torch.Tensor}, (path, {type(v) for v in weights.values()})
    config = Config.from_name("micro-llama", n_layer=2, block_size=32, n_embd=64, intermediate_size=176)
    GPT(config).load_state_dict(weights, strict=True)
    print("loaded", Path(path).name, len(weights))
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_float8_run_saves_ordinary_weights_and_resumes_with_or_without_float8(tmp_path):
    pytest.importorskip("torchao", reason="torchao is in requirements/test.txt")
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads((tmp_path / "report.json").read_text())
    # every block linear (q/k/v, attention output, fc_1, fc_2, proj) of both layers, not the head
    assert r["fp8_float8_layers"] == r["rowwise_float8_layers"] == r["tokenwise_float8_layers"] == 10
    assert r["plain_float8_layers"] == 0
    # float8 rounding moves the losses a little, not much
    for name in ("fp8", "rowwise", "tokenwise"):
        rel = [abs(a - b) / b for a, b in zip(r[name], r["plain"])]
        assert 0 < max(rel) < 0.03, (name, rel)
    assert r["fp8_sharded"] == r["fp8"] == r["fp8_background"]
    # resumed at step 3, with or without float8, from the single file or the sharded directory
    for name in ("resumed_plain", "resumed_fp8", "resumed_from_sharded", "resumed_tokenwise"):
        assert len(r[name]) == 2 and abs(r[name][0] - r["plain"][3]) / r["plain"][3] < 0.03, (name, r[name])
    assert r["resumed_from_sharded"] == r["resumed_plain"]

    # all in one Python start (torch costs seconds here)
    checkpoints = ("fp8.pth", "fp8-sharded.pth", "tokenwise.pth", "fp8-background.pth")
    proc = subprocess.run([sys.executable, "-c", READER, *(str(tmp_path / c) for c in checkpoints)],
                          capture_output=True, text=True, timeout=120, env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for checkpoint in checkpoints:
        assert f"loaded {checkpoint} " in proc.stdout, checkpoint + proc.stdout[-3000:]


def test_float8_layers_are_the_blocks_linears_only():
    pytest.importorskip("torchao", reason="torchao is in requirements/test.txt")
    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.training.float8 import convert_to_float8

    model = GPT(Config.from_name("micro-llama", n_layer=2))
    assert convert_to_float8(model, "tensorwise", emulate=True) == 10
    assert type(model.lm_head).__name__ == "Linear"
    assert all(type(b.mlp.proj).__name__ == "Float8Linear" for b in model.transformer.h)


def test_fp8_refusals_name_the_device_and_what_is_needed(monkeypatch):
    from lit_gpt.training.float8 import check_float8

    check_float8(None, torch.device("cpu"))  # off: nothing to check
    with pytest.raises(ValueError, match=r"needs a CUDA GPU with float8 matrix units .* Leave --fp8 out"):
        check_float8("tensorwise", torch.device("cpu"))
    with pytest.raises(ValueError, match="is not one of tensorwise, rowwise"):
        check_float8("e4m3", torch.device("cpu"))
    # an A100 (sm80) has no float8 matrix units
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"this NVIDIA A100-SXM4-80GB \(compute capability 8.0\) has no float8"):
        check_float8("rowwise", torch.device("cuda", 0))


@pytest.mark.gpu
def test_fp8_real_script_trains_like_bf16_and_resumes_without_fp8(tmp_path, same_data_dir):  # noqa: F811
    """`pretrain/tinyllama.py --fp8 tensorwise` on the GPU (bf16-mixed, compiled, FSDP2): its losses follow a bf16
    run's from the same weights and batches, and a run resumed from its checkpoint without --fp8 continues."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU of compute capability 8.9+")
    pytest.importorskip("torchao")
    from test_pretrain import COMMON, _env, metrics

    gpu = [a for a in COMMON if a not in ("--accelerator", "cpu", "--precision", "32-true", "--block_size", "32")]
    gpu += ["--block_size", "256", "--accelerator", "cuda", "--max_steps", "6", "--save_interval", "3"]
    gpu += ["--eval_interval", "3", "--attention", "sdpa"]

    def run(out_dir: Path, *args: str) -> str:
        cmd = [sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), *gpu, "--data_dir", str(same_data_dir)]
        proc = subprocess.run([*cmd, "--out_dir", str(out_dir), *args], capture_output=True, text=True, timeout=600,
                              env=_env())  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout

    assert "float8: tensorwise" in run(tmp_path / "fp8", "--fp8", "tensorwise")
    run(tmp_path / "bf16")
    fp8, bf16 = metrics(tmp_path / "fp8"), metrics(tmp_path / "bf16")
    for step in range(1, 7):
        assert fp8[step] == pytest.approx(bf16[step], rel=0.03), (step, fp8, bf16)
    assert fp8 != bf16
    out = run(tmp_path / "resumed", "--resume", str(tmp_path / "fp8" / "step-00000003.pth"))
    assert "Resumed at step 3" in out and "float8: off" in out
    resumed = metrics(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6] and resumed[4] == pytest.approx(fp8[4], rel=0.03)


def _tokenwise_errors(device: str, compile: bool = False):
    """Relative errors of a `TokenwiseFloat8Linear` (after an RMSNorm, as in a block) against the same chain in
    float64: the output, the input gradient and the weight gradient. 3 x 37 tokens (not a multiple of 16) whose
    magnitudes span four decades, under bf16 autocast on CUDA."""
    from lit_gpt.model import RMSNorm
    from lit_gpt.training.float8 import TokenwiseFloat8Linear

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = torch.randn(3, 37, 256, generator=gen) * torch.logspace(-3, 1, 37)[None, :, None]
    grad = torch.randn(3, 37, 384, generator=gen)
    linear = torch.nn.Linear(256, 384, bias=False)
    ref_norm, ref_linear = RMSNorm(256).double(), torch.nn.Linear(256, 384, bias=False).double()
    ref_linear.weight.data.copy_(linear.weight.data)
    x64 = x.double().requires_grad_()
    ref_linear(ref_norm(x64)).backward(grad.double())

    norm, f8 = RMSNorm(256).to(device), TokenwiseFloat8Linear.from_linear(linear.to(device))
    chain = torch.nn.Sequential(norm, f8)
    if compile:
        chain = torch.compile(chain)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    xd = x.to(device).requires_grad_()
    with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        y = chain(xd)
    y.backward(grad.to(device, y.dtype))

    def rel(a, b):
        return ((a.double().cpu() - b).norm() / b.norm()).item()

    with torch.no_grad():
        ref_y = ref_linear(ref_norm(x.double()))
    return rel(y, ref_y), rel(xd.grad, x64.grad), rel(f8.weight.grad, ref_linear.weight.grad), y.dtype


def test_tokenwise_float8_is_as_close_as_torchao_rowwise_and_closer_than_tensorwise():
    """The `tokenwise` recipe's three products (`lit_gpt.training.float8._TokenwiseProduct`, real float8 rounding,
    the CPU's float8 product): within float8's rounding of the float64 chain, no further than torchao's rowwise
    recipe in its forward and input-gradient products and closer than its tensorwise recipe in all three."""
    pytest.importorskip("torchao", reason="torchao is in requirements/test.txt")
    import dataclasses

    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    from lit_gpt.model import RMSNorm

    torch.manual_seed(3)
    y_err, gx_err, gw_err, _ = _tokenwise_errors("cpu")
    assert 0 < y_err < 0.05 and 0 < gx_err < 0.05 and 0 < gw_err < 0.05, (y_err, gx_err, gw_err)

    torch.manual_seed(3)  # the same inputs, through torchao's layers (emulated: float8 rounding, float32 products)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = torch.randn(3, 37, 256, generator=gen) * torch.logspace(-3, 1, 37)[None, :, None]
    grad = torch.randn(3, 37, 384, generator=gen)
    weight = torch.nn.Linear(256, 384, bias=False).weight.detach()
    ref_linear = torch.nn.Linear(256, 384, bias=False).double()
    ref_linear.weight.data.copy_(weight)
    x64 = x.double().requires_grad_()
    ref_y = ref_linear(RMSNorm(256).double()(x64))
    ref_y.backward(grad.double())
    for recipe in ("tensorwise", "rowwise"):
        config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=True)
        chain = torch.nn.Sequential(RMSNorm(256), torch.nn.Linear(256, 384, bias=False))
        chain[1].weight.data.copy_(weight)
        convert_to_float8_training(chain, config=config, module_filter_fn=lambda m, fqn: fqn == "1")
        xt = x.clone().requires_grad_()
        y = chain(xt)
        y.backward(grad)
        errors = [
            ((a.double() - b).norm() / b.norm()).item()
            for a, b in ((y, ref_y), (xt.grad, x64.grad), (chain[1].weight.grad, ref_linear.weight.grad))
        ]
        if recipe == "tensorwise":
            assert y_err < errors[0] and gx_err < errors[1] and gw_err < errors[2], (recipe, errors, gx_err, gw_err)
        else:
            assert y_err <= 1.02 * errors[0] and gx_err <= 1.02 * errors[1], (recipe, errors, y_err, gx_err)


def test_tokenwise_scales_are_powers_of_two_and_the_transposed_copy_is_exact():
    """The per-token scales are powers of 2, so that the weight-gradient product's one-scale copy is the per-token
    float8 tensor shifted exactly (below e4m3's normal range only, where it rounds), transposed, padded with zero
    tokens to a multiple of 16."""
    from lit_gpt.training.float8 import quantize_rows, requantize_transposed

    x = torch.randn(37, 64) * torch.logspace(-2, 2, 37)[:, None]
    x[5] = 0  # an all-zero token keeps a finite scale
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (37, 1) and torch.isfinite(scale).all()
    assert torch.equal(torch.log2(scale), torch.log2(scale).round())
    assert (q.float().abs().amax(dim=1)[scale[:, 0] < 1e6] >= 224).all()  # each token's largest uses the top octave
    t, target = requantize_transposed(q, scale)
    assert t.shape == (64, 48) and t.is_contiguous() and (t[:, 37:].float() == 0).all()
    assert target == scale.min()
    shifted = q.float() / scale * target  # exact in float32
    normal = shifted.abs() >= 2**-6  # e4m3's smallest normal
    assert torch.equal(t[:, :37].t().float()[normal], shifted[normal])


@pytest.mark.gpu
def test_tokenwise_float8_on_gpu_compiled_matches_its_cpu_rounding():
    """On an sm89+ GPU, compiled with an RMSNorm before it under bf16 autocast (the fused casts of a compiled block,
    cuBLAS's float8 products): as close to the float64 chain as on the CPU."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU of compute capability 8.9+")
    torch.manual_seed(5)
    cpu = _tokenwise_errors("cpu")
    torch.manual_seed(5)  # the same inputs
    gpu = _tokenwise_errors("cuda", compile=True)
    assert gpu[3] == torch.bfloat16
    for c, g in zip(cpu[:3], gpu[:3]):  # bf16 activations add their own rounding on the GPU
        assert g < 0.05 and g < 1.5 * c + 0.01, (cpu, gpu)
