"""Run the snapshot's scripts/benchmark.py unchanged, but make its `--profile true` print every kernel of one step,
grouped by kind (GEMMs, float8 casts/amax, attention, elementwise, optimizer, ...), instead of the top-25 table.

    cd .device/ours && python ../titan/ours_prof.py <benchmark.py arguments> --profile true
"""

import collections
import importlib.util
import os
import re
import sys

sys.path.insert(0, os.getcwd())
spec = importlib.util.spec_from_file_location(  # dev/ since the ninth session, scripts/ before
    "benchmark", "dev/benchmark.py" if os.path.exists("dev/benchmark.py") else "scripts/benchmark.py"
)
bm = importlib.util.module_from_spec(spec)
sys.modules["benchmark"] = bm
spec.loader.exec_module(bm)

CATS = [  # first match wins
    ("attention (FA4/flash)", r"flash|fmha|FlashAttn|attention"),
    ("inductor reduction (amax, norms, loss)", r"^triton_(red|per)_"),
    ("inductor pointwise (casts, SwiGLU, rope)", r"^triton_"),
    ("GEMM float8", r"e4m3|e5m2|f8f8|qgmma|nvjet_(sm\d+_)?q|_scaled_mm|fp8"),  # nvjet_sm90_q..: e4m3 A operand
    ("GEMM bf16", r"nvjet|gemm|xmma|cutlass|cublas|sm90_|Kernel2"),
    ("NCCL", r"nccl"),
    ("optimizer (fused AdamW, clip)", r"adam|Adam|multi_tensor|foreach|lpnorm|norm_kernel"),
    ("aten elementwise/copy", r"elementwise|vectorized|copy|fill|Memset|Memcpy|memcpy|memset|cat|index"),
    ("aten reduction", r"reduce|Reduce|softmax|cross_entropy|nll"),
]


def categorize(name: str) -> str:
    for cat, pat in CATS:
        if re.search(pat, name):
            return cat
    return "other"


def summarize(rows, step_ms=None):
    """rows: (kernel name, self device microseconds, calls)."""
    total = sum(t for _, t, _ in rows) or 1
    by = collections.defaultdict(lambda: [0.0, 0])
    for n, t, c in rows:
        by[categorize(n)][0] += t
        by[categorize(n)][1] += c
    print(
        f"PROFILE one optimizer step: kernels total {total / 1e3:.1f} ms"
        + (f" (wall {step_ms:.1f} ms)" if step_ms else "")
    )
    print(f"{'category':42} {'ms':>9} {'share':>6} {'launches':>8}")
    for cat, (t, c) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        print(f"{cat:42} {t / 1e3:9.1f} {t / total * 100:5.1f}% {c:8d}")
    print("PROFILE top 30 kernels")
    for n, t, c in sorted(rows, key=lambda r: -r[1])[:30]:
        print(f"{t / 1e3:9.2f} ms {c:5d}x  {categorize(n)[:12]:12}  {n[:110]}")


def print_profile(step, show: bool = True) -> None:
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    if not show:
        return
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((e.key, t, e.count))
    summarize(rows, wall)


bm.print_profile = print_profile

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--selftest":
        summarize(
            [
                ("nvjet_qqtst_128x256", 5000.0, 10),
                ("triton_red_fused_abs_amax_0", 800.0, 40),
                ("triton_poi_fused__to_copy_clamp_1", 600.0, 40),
                ("flash_attn_fwd_sm90", 900.0, 22),
                ("multi_tensor_apply_kernel<FusedAdam>", 300.0, 3),
                ("nvjet_hsh_64x8", 400.0, 4),
            ]
        )
        sys.exit(0)
    from lit_gpt.cli import cli

    cli(bm.main)
