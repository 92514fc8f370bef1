"""Loss parity of the bf16 training step: the same batches from the same initial weights, step by step, against an
eager float32 reference and against litgpt.

Cases, each trained for `--steps` optimizer steps of one micro-batch, with the same AdamW, clipping and cosine
learning-rate schedule:

    ours       the production step: `lit_gpt.training.parallel` through Fabric's `ModelParallelStrategy` (FSDP2, bf16
               compute with float32 master weights), compiled blocks on CUDA, the model's default loss (fused on CUDA),
               fused AdamW, `lit_gpt.training.step.training_step`
    reference  our `GPT` in float32, eager, plain cross-entropy, TF32 off: the numerics the others should follow
    autocast   our `GPT` with float32 (master) weights, eager, plain cross-entropy, under bf16 autocast: textbook
               mixed precision without any of ours' optimizations (no FSDP2 bf16 parameters, compile or fused loss)
    litgpt     litgpt's `GPT` with float32 weights under bf16 autocast, compiled on CUDA
    nudged     the reference again, from initial weights each moved by one float32 step (`torch.nextafter`) in a
               random direction: how far two float32 runs drift apart from a difference far smaller than any
               rounding, a floor for how close a run that is not bit-identical to the reference can be expected to stay
    ours_nudged  ours from initial weights each moved by one bf16 step in a random direction: the chaotic noise floor
               of comparisons between bf16 runs
    fp8        ours with float8 training (`--fp8 tensorwise`, `lit_gpt/training/float8.py`), SDPA attention
    fa4        ours with flash-attn-4 attention (`--attention fa4`, `lit_gpt/attention.py`), bf16
    fp8_fa4    ours with both
    fp8_precise_fa4  fp8_fa4 with the backward float8 products in torchao's default precise accumulation
                  (`--fp8_fast_accum false`; fp8 and fp8_fa4 accumulate them fast, as pretraining does)
    fp8t, fp8t_fa4  fp8 and fp8_fa4 with the `tokenwise` recipe (`--fp8 tokenwise`: a scale per token) instead of
               tensorwise

The variants of ours (ours_nudged, fp8, fa4, fp8_fa4, fp8_precise_fa4, fp8t, fp8t_fa4) are also compared with ours by
the mean |loss - ours| / ours over the steps of `--window`, against the same figure for ours_nudged: a ratio <=
`--noise_ratio` (1.5) passes.

The summary gives, per step, |loss - reference| / reference: its maximum (and where) and mean; the same against
`autocast`, and between ours and litgpt; and each case's wall time (compilation included). It writes every loss to
`loss_parity.json`. A measurement: the exit code is 0 either way.

    python dev/loss_parity.py --model_name tiny-llama-1.1b --data_dir data --steps 200 --micro_batch_size 2
"""

import gc
import inspect
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.model import GPT, init_weights  # noqa: E402
from lit_gpt.training.lr import cosine_lr  # noqa: E402
from lit_gpt.training.optimizer import optimizer_param_groups  # noqa: E402
from lit_gpt.training.step import training_step  # noqa: E402

CASES = ("ours", "reference", "autocast", "litgpt", "nudged", "ours_nudged", "fp8", "fa4", "fp8_fa4", "fp8_precise_fa4")
CASES += ("fp8t", "fp8t_fa4")
# the variants of ours: the kernels they take (--fp8, --attention) and whether they start from bf16-nudged weights
VARIANTS = {
    "ours": (None, "sdpa", False),
    "ours_nudged": (None, "sdpa", True),
    "fp8": ("tensorwise", "sdpa", False),
    "fa4": (None, "fa4", False),
    "fp8_fa4": ("tensorwise", "fa4", False),
    "fp8_precise_fa4": ("tensorwise+precise_accum", "fa4", False),
    "fp8t": ("tokenwise", "sdpa", False),
    "fp8t_fa4": ("tokenwise", "fa4", False),
}
TRAIN_DIR = "slimpajama/train"


def main(
    model_name: str = "tiny-llama-1.1b",
    data_dir: Path = Path("data"),
    micro_batch_size: int = 2,
    block_size: Optional[int] = None,
    steps: int = 200,
    learning_rate: float = 4e-4,
    min_lr: float = 4e-5,
    warmup_steps: int = 20,
    weight_decay: float = 0.1,
    decay_norms_and_biases: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    cases: str = "ours,reference,autocast,litgpt,nudged",
    tolerance: float = 0.01,
    window: Tuple[int, int] = (50, 200),
    noise_ratio: float = 1.5,
    seed: int = 3407,
    compile: Optional[bool] = None,
    out_dir: Optional[Path] = None,
) -> dict:
    """Train each case on the same batches from the same weights and compare their per-step losses.

    Args:
        model_name: a registry name (`python scripts/download.py` lists them).
        data_dir: the folder holding prepared litdata chunks in `slimpajama/train` (`scripts/prepare_slimpajama.py`);
            its first `steps * micro_batch_size` sequences are read in order, without shuffling.
        micro_batch_size: sequences per optimizer step (one micro-batch per step, no accumulation).
        block_size: sequence length; the model's block size by default.
        steps: optimizer steps per case.
        learning_rate: peak learning rate of the cosine schedule (`lit_gpt.training.lr.cosine_lr`).
        min_lr: the learning rate at the last step.
        warmup_steps: steps of linear warmup.
        weight_decay: AdamW's decoupled weight decay, on the weight matrices and embeddings.
        decay_norms_and_biases: also decay the norm weights and biases (1-D parameters).
        beta1: AdamW's beta1.
        beta2: AdamW's beta2.
        grad_clip: clip the gradient norm to this value; 0 disables clipping.
        cases: comma-separated cases to run, of `ours`, `reference`, `autocast`, `litgpt`, `nudged`, `ours_nudged`,
            `fp8`, `fa4`, `fp8_fa4`, `fp8_precise_fa4`, `fp8t`, `fp8t_fa4`; the differences are taken against
            `reference`, `autocast` and `ours`, so keep one of them in the list. fp8 and fa4 need a GPU that runs
            them (they are skipped, saying why, elsewhere).
        tolerance: the largest per-step relative difference from `reference` (or `autocast`) that passes (0.01 is
            1%).
        window: first and last 1-based step over which the variants of ours are compared with ours (the early
            steps, where every run follows the same steep descent, say little).
        noise_ratio: a variant's mean deviation from ours over `window` passes when at most this many times that
            of ours_nudged.
        seed: seed of the shared initial weights.
        compile: `torch.compile` ours (per block, as in pretraining) and litgpt; on by default on CUDA. The reference
            is always eager.
        out_dir: where to write `loss_parity.json`; `$OUT` or the working directory by default.
    """
    from lit_gpt.training.fabric import L, ModelParallelStrategy  # the one Fabric of the library's own code
    from lit_gpt.training.parallel import make_parallelize_fn

    names = [c.strip() for c in cases.split(",") if c.strip()]
    if not names or set(names) - set(CASES):
        raise ValueError(f"--cases {cases!r} must name some of {', '.join(CASES)}, comma-separated")
    cuda = torch.cuda.is_available()
    compile = cuda if compile is None else compile
    out_dir = Path(out_dir or os.environ.get("OUT", "."))
    config = Config.from_name(model_name, **({"block_size": block_size} if block_size else {}))
    batches = load_batches(data_dir, config.block_size, micro_batch_size, steps)

    strategy = ModelParallelStrategy(
        make_parallelize_fn(precision="bf16-mixed", compile=compile), data_parallel_size=1, tensor_parallel_size=1
    )
    fabric = L.Fabric(devices=1, strategy=strategy, precision="bf16-mixed")
    fabric.launch()
    device = fabric.device
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'CPU'}; {model_name}, "
        f"{steps} steps of {micro_batch_size} x {config.block_size} tokens, compile={compile}",
        flush=True,
    )
    initial_state = initial_weights(config, seed, device)

    lr_at = partial(cosine_lr, learning_rate=learning_rate, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=steps)

    def make_optimizer(model: torch.nn.Module, fused: Optional[bool] = None) -> torch.optim.Optimizer:
        groups = optimizer_param_groups(model, weight_decay, decay_norms_and_biases)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=fused)

    runners = {name: partial(run_ours, fabric, *VARIANTS[name], compile=compile, seed=seed) for name in VARIANTS}
    runners.update(
        {
            "reference": partial(run_reference, device=device),
            "autocast": partial(run_reference, device=device, autocast=True),
            "litgpt": partial(run_litgpt, device=device, compile=compile),
            "nudged": partial(run_reference, device=device, nudge_seed=seed + 1),
        }
    )
    losses: Dict[str, List[float]] = {}
    seconds: Dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        result = runners[name](config, initial_state, batches, lr_at, make_optimizer, grad_clip)
        if result is None:
            continue
        losses[name] = result
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.1f}s", flush=True)
        gc.collect()
        if cuda:
            torch._dynamo.reset()  # compiled graphs hold on to the model
            torch.cuda.empty_cache()

    summary = summarize(losses, seconds, tolerance, window, noise_ratio)
    print_summary(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = dict(model_name=model_name, data_dir=str(data_dir), micro_batch_size=micro_batch_size)
    args.update(block_size=config.block_size, steps=steps, learning_rate=learning_rate, min_lr=min_lr)
    args.update(warmup_steps=warmup_steps, weight_decay=weight_decay, decay_norms_and_biases=decay_norms_and_biases)
    args.update(beta1=beta1, beta2=beta2, grad_clip=grad_clip, seed=seed, compile=compile, window=list(window))
    record = dict(args=args, torch=torch.__version__, device=str(device), losses=losses, summary=summary)
    (out_dir / "loss_parity.json").write_text(json.dumps(record, indent=1))
    print(f"Wrote {out_dir / 'loss_parity.json'}")
    return summary


def load_batches(data_dir: Path, block_size: int, micro_batch_size: int, steps: int) -> torch.Tensor:
    """The first `steps * micro_batch_size` sequences of `data_dir/slimpajama/train`, in order, as a CPU tensor
    (steps, micro_batch_size, block_size + 1)."""
    from litdata.streaming import StreamingDataset, TokensLoader

    folder = Path(data_dir) / TRAIN_DIR
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(
            f"--data_dir {data_dir} lacks prepared litdata chunks in {TRAIN_DIR} (no index.json). Prepare them with "
            "scripts/prepare_slimpajama.py (see tutorials/pretrain_tinyllama.md), or pass --data_dir pointing to "
            "the folder that holds them."
        )
    dataset = StreamingDataset(str(folder), item_loader=TokensLoader(block_size=block_size + 1), shuffle=False)
    needed = steps * micro_batch_size
    if len(dataset) < needed:
        raise ValueError(
            f"{folder} holds {len(dataset)} sequences of {block_size + 1} tokens; --steps {steps} x "
            f"--micro_batch_size {micro_batch_size} needs {needed}. Prepare more data with "
            "scripts/prepare_slimpajama.py, or lower --steps, --micro_batch_size or --block_size."
        )
    sequences = [item for _, item in zip(range(needed), dataset)]
    return torch.stack(sequences).view(steps, micro_batch_size, block_size + 1)


def initial_weights(config: Config, seed: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """TinyLlama's initialization under `seed` (computed on `device`, which is fast on a GPU), kept on the CPU."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    init_weights(model, config.n_layer, config.n_embd)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def train(
    name: str,
    step: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: torch.Tensor,
    lr_at: Callable[[int], float],
    device: torch.device,
) -> List[float]:
    """Run `step` on every batch with the scheduled learning rate; returns the per-step losses."""
    losses = []
    every = max(1, len(batches) // 10)
    t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        lr = lr_at(i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(step(batch.to(device, non_blocking=True)).detach().float())
        if (i + 1) % every == 0 or i + 1 == len(batches):  # the only host syncs
            elapsed = time.perf_counter() - t0
            print(f"{name:9} step {i + 1:>4}/{len(batches)} loss {losses[-1].item():.4f} lr {lr:.2e} {elapsed:.0f}s")
    return torch.stack(losses).tolist()


def run_ours(
    fabric, fp8, attention, nudged, config, initial_state, batches, lr_at, make_optimizer, grad_clip, compile, seed
) -> Optional[List[float]]:
    from lit_gpt.attention import choose_attention
    from lit_gpt.training.float8 import check_float8, precompute_scales_after_step
    from lit_gpt.training.parallel import make_parallelize_fn

    name = {v: k for k, v in VARIANTS.items()}[(fp8, attention, nudged)]
    fp8, fast_accum = (fp8.partition("+")[0], "+precise_accum" not in fp8) if fp8 else (None, True)
    try:
        check_float8(fp8, fabric.device)
        choose_attention(attention, config, fabric.device, "bf16-mixed")
    except ValueError as e:
        print(f"{name}: skipped, {e}")
        return None
    # the strategy applies its parallelize function in `fabric.setup`: this case's kernels
    fabric.strategy._parallelize_fn = make_parallelize_fn(
        precision="bf16-mixed", compile=compile, attention=attention, fp8=fp8, fp8_fast_accum=fast_accum
    )
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    model.to_empty(device=fabric.device)
    # before sharding: plain tensors into plain parameters
    model.load_state_dict(nudge(initial_state, seed + 2, torch.bfloat16) if nudged else initial_state)
    model = fabric.setup(model)
    # as pretrain/tinyllama.py: fused AdamW wherever it exists
    optimizer = make_optimizer(model, fused=fabric.device.type in ("cuda", "cpu"))
    if fp8:
        precompute_scales_after_step(optimizer, model)
    optimizer = fabric.setup_optimizers(optimizer)

    def step(batch: torch.Tensor) -> torch.Tensor:
        return training_step(fabric, model, optimizer, [batch], grad_clip)[0]

    return train(name, step, optimizer, batches, lr_at, fabric.device)


@contextmanager
def full_float32_matmuls() -> Iterator[None]:
    """Float32 matrix products without TF32, restoring the previous settings after."""
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def run_reference(
    config,
    initial_state,
    batches,
    lr_at,
    make_optimizer,
    grad_clip,
    device,
    autocast: bool = False,
    nudge_seed: Optional[int] = None,
) -> List[float]:
    """Our plain model with float32 weights, eager: in float32 (TF32 off), or under bf16 autocast. With `nudge_seed`,
    the float32 run starts from `nudge(initial_state, nudge_seed)`."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.load_state_dict(initial_state if nudge_seed is None else nudge(initial_state, nudge_seed))
    model.fused_loss = False
    optimizer = make_optimizer(model)

    def step(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch[:, :-1], targets=batch[:, 1:])
        update(model, optimizer, loss, grad_clip)
        return loss

    if autocast:
        return train("autocast", step, optimizer, batches, lr_at, device)
    with full_float32_matmuls():
        return train("reference" if nudge_seed is None else "nudged", step, optimizer, batches, lr_at, device)


def nudge(
    state: Dict[str, torch.Tensor], seed: int, step_dtype: torch.dtype = torch.float32
) -> Dict[str, torch.Tensor]:
    """Each floating-point value moved by one step of `step_dtype` (the distance from its value rounded to that
    dtype to the next one), up or down at random (`seed`). In float32 a relative change of 2^-24 to 2^-23, below
    bf16's rounding step (2^-9 to 2^-8) by a factor of 2^15; in bfloat16 one bf16 rounding step."""
    generator = torch.Generator().manual_seed(seed)
    nudged = {}
    for name, value in state.items():
        if value.is_floating_point():
            up = torch.rand(value.shape, generator=generator) < 0.5
            rounded = value.to(step_dtype)
            neighbour = torch.nextafter(rounded, torch.where(up, torch.inf, -torch.inf).to(step_dtype))
            value = value + (neighbour.to(value.dtype) - rounded.to(value.dtype))
        nudged[name] = value
    return nudged


def run_litgpt(
    config, initial_state, batches, lr_at, make_optimizer, grad_clip, device, compile
) -> Optional[List[float]]:
    try:
        import litgpt
        from litgpt.model import GPT as LitGPT
    except ImportError as e:
        print(f"litgpt: skipped, it is not importable ({e}); `pip install litgpt==0.5.13` to compare against it")
        return None
    # our config's fields are litgpt's, less the architecture switches it lacks (which must then be at our defaults);
    # litgpt converts our fused-qkv layout when it loads our state dict
    accepted = set(inspect.signature(litgpt.Config).parameters)
    ours = {k: v for k, v in asdict(config).items() if k != "hf_config"}
    unknown = {k: v for k, v in ours.items() if k not in accepted and v != type(config).__dataclass_fields__[k].default}
    if unknown:
        print(f"litgpt: skipped, its Config has no fields {sorted(unknown)} that {config.name} sets")
        return None
    fields = {k: v for k, v in ours.items() if k in accepted}
    with torch.device("meta"):
        model = LitGPT(litgpt.Config(**fields))
    model.to_empty(device=device)
    model.reset_parameters()  # the rope cache, not a parameter, is rebuilt on the device
    model.load_state_dict(initial_state, strict=True)
    optimizer = make_optimizer(model)
    forward = torch.compile(model) if compile else model

    def step(batch: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long())
        update(model, optimizer, loss, grad_clip)
        return loss

    return train("litgpt", step, optimizer, batches, lr_at, device)


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """The plain single-device step of the reference and litgpt cases: backward, clip, AdamW, zero the gradients."""
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def compare(losses: List[float], baseline: List[float]) -> dict:
    """Per-step |loss - baseline| / baseline: the maximum, its 1-based step, and the mean (a non-finite loss counts
    as an infinite difference)."""
    a, b = torch.tensor(losses, dtype=torch.float64), torch.tensor(baseline, dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"Cannot compare loss curves of {a.numel()} and {b.numel()} steps")
    rel = torch.nan_to_num((a - b).abs() / b.abs(), nan=float("inf"))
    return dict(max=rel.max().item(), max_step=int(rel.argmax()) + 1, mean=rel.mean().item())


def window_deviation(losses: List[float], baseline: List[float], window: Tuple[int, int]) -> float:
    """Mean |loss - baseline| / baseline over the 1-based steps window[0]..window[1] (clipped to the run)."""
    a = torch.tensor(losses, dtype=torch.float64)[window[0] - 1 : window[1]]
    b = torch.tensor(baseline, dtype=torch.float64)[window[0] - 1 : window[1]]
    if a.numel() == 0:
        raise ValueError(f"--window {window} holds no step of a run of {len(losses)} steps")
    return torch.nan_to_num((a - b).abs() / b.abs(), nan=float("inf")).mean().item()


def summarize(
    losses: Dict[str, List[float]],
    seconds: Dict[str, float],
    tolerance: float,
    window: Tuple[int, int] = (50, 200),
    noise_ratio: float = 1.5,
) -> dict:
    """Each case's first and last loss and seconds; each other case against `reference` and against `autocast`
    (with whether the maximum relative difference is within `tolerance`); ours against litgpt; each variant of ours
    against ours over `window`, as a multiple of ours_nudged's deviation (within `noise_ratio` or not)."""
    summary = dict(tolerance=tolerance, cases={}, vs_reference={}, vs_autocast={}, vs_ours={})
    for name, curve in losses.items():
        summary["cases"][name] = dict(steps=len(curve), first_loss=curve[0], last_loss=curve[-1])
        summary["cases"][name]["seconds"] = seconds.get(name)
    for baseline in ("reference", "autocast"):
        if baseline not in losses:
            continue
        for name in losses:
            if name not in (baseline, "reference"):
                diff = compare(losses[name], losses[baseline])
                summary[f"vs_{baseline}"][name] = dict(diff, within_tolerance=diff["max"] <= tolerance)
    if "ours" in losses and "litgpt" in losses:
        summary["ours_vs_litgpt"] = compare(losses["ours"], losses["litgpt"])
    if "ours" in losses:
        floor = window_deviation(losses["ours_nudged"], losses["ours"], window) if "ours_nudged" in losses else None
        for name in VARIANTS:
            if name != "ours" and name in losses:
                d = dict(window=list(window), mean=window_deviation(losses[name], losses["ours"], window))
                if floor:
                    d.update(noise_floor=floor, ratio=d["mean"] / floor, within=d["mean"] <= noise_ratio * floor)
                summary["vs_ours"][name] = d
        summary["noise_ratio"] = noise_ratio
    return summary


def print_summary(summary: dict) -> None:
    print(f"{'case':9} {'steps':>5} {'first loss':>10} {'last loss':>10} {'seconds':>8}")
    for name, c in summary["cases"].items():
        secs = f"{c['seconds']:8.1f}" if c["seconds"] is not None else "       -"
        print(f"{name:9} {c['steps']:>5} {c['first_loss']:10.4f} {c['last_loss']:10.4f} {secs}")
    tol = summary["tolerance"]
    for key, what in (("vs_reference", "fp32 reference"), ("vs_autocast", "eager bf16 autocast")):
        for name, d in summary.get(key, {}).items():
            verdict = f"within {tol * 100:g}%" if d["within_tolerance"] else f"OUTSIDE {tol * 100:g}%"
            print(f"{name} vs {what}: max {d['max']:.3%} at step {d['max_step']}, mean {d['mean']:.3%} -> {verdict}")
    if "ours_vs_litgpt" in summary:
        d = summary["ours_vs_litgpt"]
        print(f"ours vs litgpt: max {d['max']:.3%} at step {d['max_step']}, mean {d['mean']:.3%}")
    for name, d in summary.get("vs_ours", {}).items():
        line = f"{name} vs ours, steps {d['window'][0]}-{d['window'][1]}: mean {d['mean']:.3%}"
        if "ratio" in d:
            verdict = "within" if d["within"] else "OUTSIDE"
            line += f" = {d['ratio']:.2f}x ours_nudged's {d['noise_floor']:.3%} -> {verdict} {summary['noise_ratio']}x"
        print(line)


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")  # as pretrain/tinyllama.py; the reference turns it off for itself
    cli(main)
