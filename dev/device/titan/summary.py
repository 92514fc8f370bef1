"""One line per measurement of run_all.sh's results.jsonl (ours, litgpt, torchtitan)."""

import json
import sys

PEAK, FPT = 989e12, 7.314e9  # MFU convention of peer_throughput.py / lit_gpt.flops (PaLM, 6N + 12LdT)
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()] if len(sys.argv) > 1 else []
print(f"{'case':22} {'impl':10} {'mbs':>3} {'acc':>3} {'tok/s':>9} {'MFU':>6} {'GiB':>6}  config")
for r in rows:
    tps = r.get("tokens_per_s")
    mem = r.get("peak_mem_gib", r.get("peak_mem_gb"))
    acc = r.get("accum", r.get("accumulation", 1))
    if r.get("impl") == "torchtitan":
        cfg = (
            f"fp8={r.get('fp8_recipe') if r.get('fp8') else 'bf16'} graphs={r.get('cuda_graphs')} ac={r.get('ac')} "
            f"attn={r.get('attn')} spmd={r.get('spmd_backend')} loss={r.get('loss')}"
        )
        fails = r.get("attempts_failed") or []
        if fails:
            cfg += " FAILED-FIRST: " + " | ".join(f"[{f.get('args')}] {str(f.get('error'))[-160:]}" for f in fails)
    elif r.get("impl") == "ours":
        cfg = f"attn={r.get('attention')} fp8={r.get('fp8') or 'bf16'} loss={r.get('loss')}"
    else:
        cfg = f"compile={r.get('compile')} loss={r.get('loss')} {r.get('error', '')}"
    t = f"{tps:9.0f}" if tps else "    ERROR"
    mfu = f"{tps * FPT / PEAK * 100:5.1f}%" if tps else "     -"
    m = f"{mem:6.1f}" if mem else "     -"
    print(f"{r.get('case', ''):22} {r.get('impl', ''):10} {r.get('mbs', ''):>3} {acc:>3} {t} {mfu} {m}  {cfg}")
    if not tps and r.get("error"):
        print("    error:", str(r["error"])[-300:])
