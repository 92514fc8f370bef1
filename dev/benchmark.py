"""Training throughput of the real training step on synthetic tokens, optionally beside peers in the same process.

The step is the one `pretrain/tinyllama.py` runs: the model parallelized by `lit_gpt.training.parallel` through Fabric's
`ModelParallelStrategy` (FSDP2, bf16 compute with float32 master weights), the fused chunked cross-entropy, fused
AdamW, gradient clipping. Peers come from `bench/peer_throughput.py` (litgpt's GPT, transformers' Llama) and run in
the same process, so that every figure of one call is measured on the same GPU at the same time.

    python dev/benchmark.py --model_name tiny-llama-1.1b --micro_batch_sizes "[8, 16]" \
        --peers litgpt:1:16,hf:1:8 --peer_script .device/bench/peer_throughput.py
"""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt import flops  # noqa: E402
from lit_gpt.attention import KERNELS, choose_attention  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.data.loaders import data_eos_id  # noqa: E402
from lit_gpt.documents import check_document_flags, count_documents  # noqa: E402
from lit_gpt.hf import read_model_config  # noqa: E402
from lit_gpt.model import GPT, init_weights  # noqa: E402
from lit_gpt.training.float8 import check_float8, precompute_scales_after_step  # noqa: E402
from lit_gpt.training.step import document_bounds, training_step  # noqa: E402


def main(
    model_name: str = "tiny-llama-1.1b",
    model_config: Optional[Path] = None,
    micro_batch_sizes: List[int] = (8,),
    accumulation: int = 1,
    devices: int = 1,
    reshard_after_forward: Optional[bool] = None,
    reshard_after_backward: Optional[bool] = None,
    block_size: Optional[int] = None,
    precision: str = "bf16-mixed",
    attention: str = "auto",
    fp8: Optional[str] = None,
    fp8_fast_accum: bool = True,
    document_mask: bool = False,
    document_positions: bool = False,
    data_dir: Optional[Path] = None,
    eos_id: Optional[int] = None,
    compile: Optional[bool] = None,
    activation_checkpointing: bool = False,
    fused_loss: bool = True,
    autocast: bool = True,
    grad_clip: float = 1.0,
    memory_budget: Optional[float] = None,
    steps: int = 10,
    warmup: int = 3,
    peers: str = "",
    peer_script: Path = Path("bench/peer_throughput.py"),
    profile: bool = False,
    trace: bool = False,
    out_dir: Optional[Path] = None,
) -> None:
    """Print tokens/s, MFU and peak memory of the training step for each micro-batch size.

    Args:
        model_name: a registry name (`python scripts/download.py` lists them).
        model_config: instead of `--model_name`: a Hugging Face `config.json` (llama, qwen2, qwen3, olmo2) or a
            `lit_config.json`, as `pretrain/tinyllama.py --model_config` reads it.
        micro_batch_sizes: sequences per forward/backward pass; each size is one measurement.
        accumulation: micro-batches per optimizer step (gradient accumulation), as `pretrain/tinyllama.py` runs
            global_batch_size / micro_batch_size of them on one GPU.
        devices: processes (GPUs), FSDP2 over all of them as in `pretrain/tinyllama.py --devices`; tokens/s is per
            process. Peers run only with one device.
        reshard_after_forward: as in `pretrain/tinyllama.py`: free each block's gathered weights after its forward.
        reshard_after_backward: as in `pretrain/tinyllama.py`: false keeps the gathered weights between the
            micro-batches of a step. Default for both, as there: `lit_gpt.training.parallel.reshard_choices`.
        block_size: sequence length; the model's block size by default.
        precision: `bf16-mixed` (bf16 compute, float32 master weights), `bf16-true` or `32-true`.
        attention: the attention kernel, as in `pretrain/tinyllama.py`: `auto` (flash-attn-4 on Hopper when it
            imports, else SDPA), `sdpa` or `fa4` (`lit_gpt/attention.py`); also `fa4_func`, flash-attn-4's public
            `flash_attn_func` called directly (a graph break in each compiled block), to measure against the
            custom ops of `fa4`.
        fp8: float8 training of the block linear layers, `tensorwise`, `rowwise` or `tokenwise`
            (`lit_gpt/training/float8.py`);
            bf16 if left out.
        fp8_fast_accum: with `--fp8`, accumulate the two backward products in cuBLAS's fast float8 mode too, as
            `pretrain/tinyllama.py` does by default (`lit_gpt.training.float8.convert_to_float8`); false: torchao's
            default.
        document_mask: attention within documents, as `pretrain/tinyllama.py --document_mask true`; needs
            `--data_dir` (or `--eos_id`), so that the rows hold real documents.
        document_positions: with `--document_mask`, rotary positions restarting at each document.
        data_dir: a prepared litdata folder (e.g. data/slimpajama/train) whose first sequences are the benchmark's
            micro-batches instead of random tokens: the documents and their lengths of real data.
        eos_id: the end-of-document id for `--document_mask`; default: the one `--data_dir`'s prepare.json records.
        compile: `torch.compile` each transformer block; on by default on CUDA.
        activation_checkpointing: recompute activations in backward.
        fused_loss: the chunked fused output projection + cross-entropy; False for the plain reference.
        autocast: run the forward pass under Fabric's autocast as well as with FSDP2's bf16 parameters.
        grad_clip: clip the gradient norm to this value; 0 skips clipping (the norm is still computed).
        memory_budget: `torch._functorch.config.activation_memory_budget` (0..1): recompute cheap activations
            in backward until saved activations fit this fraction.
        steps: timed optimizer steps per measurement, after `warmup` untimed ones.
        warmup: untimed steps first (compilation, allocator warm-up).
        peers: `impl:compile:micro_batch` cases of `peer_script` (litgpt, hf, project) to run in the same process.
        peer_script: path to `peer_throughput.py`.
        profile: print the 25 most expensive CUDA kernels of one step (torch.profiler).
        trace: write a Chrome trace of one step per process (`trace-rank<R>-mbs<M>.json.gz` in `out_dir`).
        out_dir: where to write `benchmark.json`; `$OUT` or the working directory by default.
    """
    from lit_gpt.training.fabric import L, ModelParallelStrategy  # the one Fabric of the library's own code
    from lit_gpt.training.parallel import make_parallelize_fn, reshard_choices

    cuda = torch.cuda.is_available()
    compile = cuda if compile is None else compile
    out_dir = Path(out_dir or os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    config = read_model_config(model_config) if model_config else Config.from_name(model_name)
    T = block_size or config.block_size

    reshard_after_forward, reshard_after_backward = reshard_choices(
        reshard_after_forward, reshard_after_backward, flops.num_parameters(config, True), devices,
        torch.device("cuda" if cuda else "cpu"), precision,
    )  # fmt: skip
    device = torch.device("cuda" if cuda else "cpu")
    check_float8(fp8, device)
    check_document_flags(document_mask, document_positions, eos_id)
    if document_mask:
        if data_dir is None and eos_id is None:
            raise ValueError("--document_mask true needs --data_dir (real documents) or --eos_id")
        eos_id = data_eos_id([str(data_dir)] if data_dir else [], eos_id, config.padded_vocab_size)
    if attention == "fa4_func":
        if document_mask:
            raise ValueError("--attention fa4_func is causal only; use --attention fa4 with --document_mask")
        choose_attention("fa4", config, device, precision)  # the same refusals
        KERNELS["fa4_func"] = fa4_func
        attention_note = "attention: flash_attn.cute.flash_attn_func called directly (--attention fa4_func)"
    else:
        attention, attention_note = choose_attention(attention, config, device, precision)
    parallelize = make_parallelize_fn(
        precision=precision, compile=compile, activation_checkpointing=activation_checkpointing,
        reshard_after_forward=reshard_after_forward, attention=attention, fp8=fp8,
        fp8_fast_accum=fp8_fast_accum,
    )  # fmt: skip
    strategy = ModelParallelStrategy(parallelize, data_parallel_size=devices, tensor_parallel_size=1)
    if memory_budget is not None:
        torch._functorch.config.activation_memory_budget = memory_budget
    fabric = L.Fabric(devices=devices, strategy=strategy, precision=precision if autocast else "32-true")
    fabric.launch()
    fabric.print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'CPU'}, {devices} process(es)")
    mask = f"within documents (eos id {eos_id})" if document_mask else "across documents"
    fabric.print(f"{attention_note}; float8: {fp8 or 'off'}; attention {mask}")
    doc_kwargs = dict(eos_id=eos_id if document_mask else None, document_positions=document_positions)
    results = []
    for mbs in micro_batch_sizes:
        torch.manual_seed(0)
        with fabric.init_module(empty_init=True):
            model = GPT(config)
        model.fused_loss = fused_loss
        model = fabric.setup(model)
        init_weights(model, config.n_layer, config.n_embd)
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=cuda)
        if fp8:
            precompute_scales_after_step(optimizer, model)
        optimizer = fabric.setup_optimizers(optimizer)
        if data_dir is None:
            x = [torch.randint(0, config.vocab_size, (mbs, T + 1)) for _ in range(accumulation)]
        else:
            x = read_batches(data_dir, T, mbs, accumulation)
        bounds = document_bounds(x, doc_kwargs["eos_id"])  # counted on the host, as pretraining does
        x = [batch.to(fabric.device) for batch in x]

        def step(model=model, optimizer=optimizer, x=x, bounds=bounds):
            return training_step(
                fabric, model, optimizer, x, grad_clip, reshard_after_backward, max_documents=bounds, **doc_kwargs
            )[0]

        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        sync(cuda)
        warmup_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync(cuda)
        dt = (time.perf_counter() - t0) / steps
        tps = mbs * T * accumulation / dt
        r = dict(
            impl="ours",
            attention=attention,
            fp8=fp8,
            fp8_fast_accum=fp8_fast_accum,
            document_mask=document_mask,
            documents_per_row=documents_per_row(x, doc_kwargs["eos_id"]),
            compile=compile,
            devices=devices,
            reshard_after_forward=reshard_after_forward,
            reshard_after_backward=reshard_after_backward,
            mbs=mbs,
            accumulation=accumulation,
            step_s=dt,
            tokens_per_s=tps,
            mfu=flops.mfu(tps, flops.flops_per_token(config, T), fabric.device),
            peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            warmup_s=warmup_s,
            loss=loss.item(),
        )
        fabric.print(json.dumps(r), flush=True)
        results.append(r)
        if profile and cuda:
            print_profile(step, show=fabric.global_rank == 0)  # every process runs the step's collectives
        if trace:
            write_trace(step, out_dir / f"trace-rank{fabric.global_rank}-mbs{mbs}.json.gz")
        del model, optimizer, x
        if cuda:
            torch.cuda.empty_cache()

    if peers and devices == 1:
        spec = importlib.util.spec_from_file_location("peer_throughput", peer_script)
        peer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peer)
        for case in peers.split(","):
            impl, c, mbs = case.split(":")
            try:
                r = peer.run(impl, c == "1", int(mbs), steps, warmup)
            except Exception as e:  # a peer that fails must not hide the other figures
                r = dict(impl=impl, compile=c == "1", mbs=int(mbs), error=repr(e)[:300])
            print(json.dumps(r), flush=True)
            results.append(r)
            torch.cuda.empty_cache()

    if fabric.global_rank:
        return
    (out_dir / "benchmark.json").write_text(json.dumps(results, indent=1))
    print(f"{'impl':8} {'compile':7} {'kernels':10} {'mbs':>4} {'tok/s':>9} {'MFU':>6} {'GiB':>7} {'step s':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['impl']:8} {str(r['compile']):7} {'-':10} {r['mbs']:>4} ERROR {r['error'][:80]}")
            continue
        mfu = f"{r['mfu'] * 100:5.1f}%" if r.get("mfu") else "    -"
        mem = f"{r['peak_mem_gb']:7.1f}" if r.get("peak_mem_gb") else "      -"
        kernels = f"{r.get('attention', '-')}/{r.get('fp8') or 'bf16'}" if r["impl"] == "ours" else "-"
        print(
            f"{r['impl']:8} {str(r['compile']):7} {kernels:10} {r['mbs']:>4} {r['tokens_per_s']:9.0f} {mfu} {mem} "
            f"{r['step_s']:7.3f}"
        )


def documents_per_row(batches: List[torch.Tensor], eos_id: Optional[int]) -> Optional[float]:
    """The mean number of documents (or pieces of one) per row of the micro-batches, for the record."""
    if eos_id is None:
        return None
    counts = [count_documents(batch[:, :-1].cpu(), eos_id, multiple=1) for batch in batches]
    return sum(counts) / sum(batch.size(0) for batch in batches)


def read_batches(data_dir: Path, block_size: int, micro_batch_size: int, n: int) -> List[torch.Tensor]:
    """The first `n` micro-batches of (micro_batch_size, block_size + 1) tokens of a prepared folder, in order
    (repeated when it holds fewer)."""
    from lit_gpt.data.loaders import val_dataloader

    batches = []
    for batch in val_dataloader(str(data_dir), block_size, micro_batch_size, num_workers=0):
        batches.append(batch)
        if len(batches) == n:
            break
    if not batches:
        raise ValueError(
            f"--data_dir {data_dir} holds fewer than {micro_batch_size} sequences of {block_size + 1} tokens"
        )
    return [batches[i % len(batches)] for i in range(n)]


def fa4_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """flash-attn-4's own autograd function: dynamo cannot trace it, so each compiled block breaks around it."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    return out[0] if isinstance(out, tuple) else out


fa4_func.prepare = None  # causal only: the benchmark refuses --document_mask with it


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def print_profile(step, show: bool = True) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    if show:
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def write_trace(step, path: Path) -> None:
    """A Chrome trace (chrome://tracing, Perfetto) of one step: CPU ops, kernels, and the streams they ran on."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        sync(torch.cuda.is_available())
    prof.export_chrome_trace(str(path))


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
