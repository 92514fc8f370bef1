"""Finetune every weight of a lit checkpoint on instruction data, sharded with FSDP2 across the devices.

    python finetune/full.py --checkpoint_dir checkpoints/lit-micro-llama --data data/alpaca.json \
        --out_dir out/full-micro-llama --accelerator cpu --devices 1 --precision 32-true --max_seq_length 256 \
        --global_batch_size 8 --micro_batch_size 4 --max_steps 20 --warmup_steps 2 --save_interval 10

Checkpoints are those of pretraining (`lit_gpt/training/checkpoint.py`: one file on one process, a directory of shards
on several), and `scripts/convert_pretrained_checkpoint.py` turns one into a lit checkpoint directory (with
`--tokenizer_dir` the base checkpoint directory). The data and its template are described in `lit_gpt/data/instruct.py`.
"""

import sys
import time
from pathlib import Path
from typing import List, Literal, Optional, Union

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line, stop_quietly_before_training  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below
stop_quietly_before_training(__name__)  # Ctrl-C before the loop: one line, not a traceback

import torch  # noqa: E402

from lit_gpt.data.instruct import TemplateName  # noqa: E402
from lit_gpt.flops import num_parameters  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.signals import die_with_launcher  # noqa: E402
from lit_gpt.training.checkpoint import (  # noqa: E402
    fresh_state,
    load_checkpoint,
    load_lit_weights,
    load_metadata,
    own_out_dir,
    resume_from,
)
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.training.finetune import (  # noqa: E402
    base_record,
    check_finetune_flags,
    finetune_base,
    fit,
    instruction_data,
    restore_position,
)
from lit_gpt.training.launch import check_processes, choose_device, launch  # noqa: E402
from lit_gpt.training.optimizer import adamw  # noqa: E402
from lit_gpt.training.parallel import model_parallel_fabric, reshard_choices  # noqa: E402

# above this many parameters the model is created on the meta device and materialized shard by shard (as in
# pretraining); below, every process materializes the whole model before sharding
META_INIT_PARAMS = 100_000_000


def setup(
    checkpoint_dir: Path,
    data: Union[Path, List[Path]],
    out_dir: Optional[Path] = None,
    template: TemplateName = "alpaca",
    mask_prompt: bool = True,
    max_seq_length: Optional[int] = None,
    packing: bool = False,
    padding: Literal["longest", "max_seq_length"] = "longest",
    val_fraction: float = 0.05,
    instruction_key: str = "instruction",
    input_key: str = "input",
    output_key: str = "output",
    skip_bad_records: bool = False,
    devices: Union[int, Literal["auto"]] = "auto",
    num_nodes: int = 1,
    accelerator: Literal["auto", "cuda", "gpu", "cpu"] = "auto",
    precision: Literal["bf16-mixed", "bf16-true", "32-true"] = "bf16-mixed",
    attention: Literal["auto", "sdpa", "fa4"] = "auto",
    global_batch_size: int = 16,
    micro_batch_size: int = 1,
    epochs: int = 3,
    max_steps: Optional[int] = None,
    learning_rate: float = 2e-5,
    min_lr: float = 0.0,
    warmup_steps: int = 100,
    weight_decay: float = 0.02,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    log_interval: int = 1,
    eval_interval: int = 100,
    save_interval: int = 1000,
    keep_last: Optional[int] = None,
    logger_name: Literal["tensorboard", "csv", "wandb"] = "csv",
    compile: Optional[bool] = None,
    activation_checkpointing: bool = False,
    max_nonfinite_steps: int = 10,
    seed: int = 1337,
    resume: Union[bool, Literal["auto"], Path] = False,
    trust_pickle: bool = False,
) -> None:
    """Finetune all weights of the model of a lit checkpoint directory, FSDP2 over `--devices` × `--num_nodes`.

    Args:
        checkpoint_dir: The base model: a lit checkpoint directory (`lit_config.json`, `lit_model.pth`, tokenizer
            files), as `scripts/convert_pretrained_checkpoint.py` or `scripts/convert_hf_checkpoint.py` write it.
        data: Instruction data: a JSON file (an array of records) or JSON-lines file, or several, or a folder
            searched for them (`.json`, `.jsonl`, `.ndjson`, also compressed: `.gz`, `.zst`, `.bz2`, `.xz`), with
            the keys `--instruction_key`, `--input_key` (optional in each record) and `--output_key` (Alpaca's
            layout). `--val_fraction` of the records are held out for validation: the default needs 11 or more.
        out_dir: Where checkpoints and logs go. Default: `out/full-<model name>`.
        template: The prompt template the examples are written in (`lit_gpt.data.instruct.TEMPLATES`): `alpaca` or
            `plain`. Generate with the same `--template` (generate/base.py).
        mask_prompt: Take the loss on the response tokens only; false trains on the prompt too.
        max_seq_length: Truncate (or pack) examples to this many tokens. Default: the model's block size.
        packing: Concatenate examples into sequences of `--max_seq_length` tokens instead of padding each one.
        padding: `longest` pads each micro-batch to its longest example, `max_seq_length` every one to
            `--max_seq_length` (one shape for every step, what a compiled model prefers).
        val_fraction: Share of the records held out for validation (those of the lowest hash of the seed and the
            record: the same on every run).
        instruction_key: The key of the instruction in each record (`a.b` for a nested one).
        input_key: The key of the optional input (context) in each record.
        output_key: The key of the response in each record.
        skip_bad_records: Leave out records that cannot be read (named by file and line) with a warning, instead of
            stopping.
        devices: Processes (GPUs) per node; `auto` = every local GPU, or 1 process on a machine without one.
        num_nodes: Number of nodes; launch one command per node (see tutorials/multi_node.md).
        accelerator: `auto` picks CUDA when available, else CPU.
        precision: `bf16-mixed` (bf16 compute, float32 master weights and gradient reduction), `bf16-true` or
            `32-true`.
        attention: The attention kernel: `auto` takes flash-attn-4 on a Hopper or newer GPU when it is installed and
            suits the model, SDPA otherwise; `sdpa` or `fa4` force one.
        global_batch_size: Examples (or packed sequences) per optimizer step across all processes.
        micro_batch_size: Examples per forward/backward pass on one process; gradient accumulation steps =
            global_batch_size / (world size × micro_batch_size).
        epochs: Passes over the training examples: the cosine schedule's length, and when to stop.
        max_steps: Train this many optimizer steps instead of `--epochs` (the cosine schedule's length, and when
            to stop).
        learning_rate: Peak learning rate, reached after the warmup.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_steps: Optimizer steps of linear warmup.
        weight_decay: AdamW's decoupled weight decay on the weight matrices and embeddings.
        beta1: AdamW's beta1.
        beta2: AdamW's beta2.
        grad_clip: Clip the global gradient norm to this value (0 disables clipping).
        log_interval: Optimizer steps between log lines.
        eval_interval: Optimizer steps between validation runs on the held-out examples (and at the end).
        save_interval: Optimizer steps between checkpoints (one is also written at the end, and when a run is stopped
            by SIGINT, SIGTERM or SIGUSR1: it finishes the step, saves, prints the command that resumes it and exits
            with code 0).
        keep_last: Keep only this many of the newest checkpoints in `out_dir`. Default: keep all.
        logger_name: `csv`, `tensorboard`, or `wandb` (offline unless an API key is configured).
        compile: `torch.compile` each transformer block. Default: on for CUDA, off for CPU.
        activation_checkpointing: Recompute each block's activations in the backward pass to save memory.
        max_nonfinite_steps: Stop when this many optimizer steps in a row had a non-finite gradient norm.
        seed: Seed of the data order.
        resume: `false` starts fresh; `true` or `auto` resumes from the latest complete checkpoint in `out_dir`
            (starting fresh if there is none); a path resumes from that checkpoint.
        trust_pickle: Resume from a checkpoint that holds pickled Python objects besides tensors and plain values.
            Unpickling can run arbitrary code: only for checkpoints from a source you trust.
    """
    hparams = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    config = finetune_base(hparams, checkpoint_dir)
    out_dir = out_dir or Path("out") / f"full-{config.name}"
    world_size, accumulation = check_processes(devices, num_nodes, accelerator, global_batch_size, micro_batch_size)
    check_finetune_flags(hparams, out_dir, config.block_size)
    device, compile, attention, attention_note = choose_device(config, accelerator, precision, compile, attention)
    data = instruction_data(hparams, config.block_size, world_size)
    resume = checkpoint_to_resume(resume, out_dir, hparams["trust_pickle"])
    reshard_after_forward, reshard_after_backward = reshard_choices(
        None, None, num_parameters(config, True), world_size, device, precision
    )
    fabric = model_parallel_fabric(
        accelerator, devices, num_nodes, precision, world_size, logger_name, out_dir,
        f"full-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}", compile=compile,
        activation_checkpointing=activation_checkpointing, reshard_after_forward=reshard_after_forward,
        attention=attention,
    )  # fmt: skip
    die_with_launcher()  # the processes fabric.launch() starts end with this one, however it ends
    launch(fabric)
    with own_out_dir(fabric, out_dir):
        hparams.update(out_dir=str(out_dir), world_size=world_size, model_config=config.to_dict(), compile=compile)
        hparams.update(reshard_after_forward=reshard_after_forward, reshard_after_backward=reshard_after_backward)
        hparams.update(attention=attention, base=base_record(checkpoint_dir) if fabric.global_rank == 0 else None)
        hparams["base"] = fabric.broadcast(hparams["base"])
        fabric.print({k: v for k, v in hparams.items() if k not in ("model_config", "base")})
        fabric.print(attention_note)
        fabric.logger.log_hyperparams(hparams)
        main(fabric, config, hparams, data, out_dir, accumulation, resume)


def main(fabric: L.Fabric, config, hparams: dict, data, out_dir: Path, accumulation: int, resume) -> None:
    h = hparams
    fabric.seed_everything(h["seed"])
    train_batches, val_batches, max_steps = data.start(fabric, h)

    t0 = time.perf_counter()
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params < META_INIT_PARAMS:
        model.to_empty(device=fabric.device)  # the weights are loaded below, after sharding
    model = fabric.setup(model)
    model_file = Path(h["checkpoint_dir"]) / "lit_model.pth"
    load_lit_weights(fabric, model, model_file)  # a corrupt or planted file is refused in one line
    fabric.print(f"{config.name}: {n_params:,} parameters from {model_file} in {time.perf_counter() - t0:.1f}s")

    optimizer = adamw(model, h["learning_rate"], h["weight_decay"], (h["beta1"], h["beta2"]), False, fabric.device)
    optimizer = fabric.setup_optimizers(optimizer)

    state = fresh_state(model, optimizer, hparams)
    if resume:
        fabric.print(f"Resuming from {resume}")
        verify = h["resume"] not in (True, "auto")  # latest_to_resume checked the digest of what it picked
        load_checkpoint(fabric, resume, state, config.to_dict(), h["trust_pickle"], verify=verify)
        restore_position(fabric, state, train_batches, hparams)
    elif h["resume"]:
        fabric.print(f"No checkpoint in {out_dir}: starting fresh")

    fit(fabric, model, optimizer, train_batches, val_batches, state, accumulation, max_steps, out_dir)


def checkpoint_to_resume(resume, out_dir: Path, trust_pickle: bool) -> Optional[Path]:
    """The checkpoint that `--resume` names (None for a fresh start), checked to be one of this script: refused before
    any work."""
    path = resume_from(resume, out_dir, trust_pickle)
    if path is None:
        return None
    saved = load_metadata(path, trust_pickle).get("hparams", {})
    if "lora" in saved:
        raise ValueError(f"{path} is a LoRA checkpoint (an adapter alone); resume it with finetune/lora.py")
    if "template" not in saved:
        raise ValueError(
            f"{path} is not a checkpoint of finetune/full.py (it records no instruction data; a pretraining "
            "checkpoint?): to finetune its weights, convert it with scripts/convert_pretrained_checkpoint.py and "
            "pass that directory as --checkpoint_dir; to continue pretraining it, resume it with "
            "pretrain/tinyllama.py"
        )
    return path


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(setup)
