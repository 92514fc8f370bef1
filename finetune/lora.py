"""Finetune a lit checkpoint with LoRA on instruction data: the base weights stay frozen, only the adapter trains and
is saved.

    python finetune/lora.py --checkpoint_dir checkpoints/lit-micro-llama --data data/alpaca.json \
        --out_dir out/lora-micro-llama --accelerator cpu --precision 32-true --max_seq_length 256 \
        --global_batch_size 8 --micro_batch_size 4 --max_steps 20 --warmup_steps 2 --save_interval 10

Each checkpoint `out_dir/step-*.pth` holds the adapter (`lit_gpt.lora.lora_state_dict`), the optimizer state of the
adapter, the data position and the record of the base checkpoint (`lit_gpt.training.finetune.base_record`):
megabytes, where a copy of the model would take gigabytes. `scripts/merge_lora.py` folds it into the base weights as an
ordinary lit checkpoint directory. The data and its template are described in `lit_gpt/data/instruct.py`.
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
from lit_gpt.lora import TARGETS, LoRAConfig, apply_lora, lora_state_dict, tied_head_refusal  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.training.checkpoint import (  # noqa: E402
    check_compatible,
    fresh_state,
    load_metadata,
    own_out_dir,
    resume_from,
    verify_checkpoint,
)
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.training.finetune import (  # noqa: E402
    base_record,
    check_base,
    check_finetune_flags,
    finetune_base,
    fit,
    instruction_data,
    restore_position,
)
from lit_gpt.training.launch import choose_device, gradient_accumulation_steps, launch  # noqa: E402
from lit_gpt.training.logger import choose_logger  # noqa: E402
from lit_gpt.training.optimizer import adamw  # noqa: E402
from lit_gpt.training.parallel import apply_attention, checkpoint  # noqa: E402
from lit_gpt.weights import load_lit_state_dict  # noqa: E402


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
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
    lora_query: bool = True,
    lora_key: bool = False,
    lora_value: bool = True,
    lora_projection: bool = False,
    lora_mlp: bool = False,
    lora_head: bool = False,
    accelerator: Literal["auto", "cuda", "gpu", "cpu"] = "auto",
    precision: Literal["bf16-mixed", "bf16-true", "32-true"] = "bf16-true",
    attention: Literal["auto", "sdpa", "fa4"] = "auto",
    global_batch_size: int = 16,
    micro_batch_size: int = 1,
    epochs: int = 3,
    max_steps: Optional[int] = None,
    learning_rate: float = 3e-4,
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
    """LoRA-finetune the model of a lit checkpoint directory on one device.

    Args:
        checkpoint_dir: The base model: a lit checkpoint directory (`lit_config.json`, `lit_model.pth`, tokenizer
            files), as `scripts/convert_pretrained_checkpoint.py` or `scripts/convert_hf_checkpoint.py` write it.
        data: Instruction data: a JSON file (an array of records) or JSON-lines file, or several, or a folder
            searched for them (`.json`, `.jsonl`, `.ndjson`, also compressed: `.gz`, `.zst`, `.bz2`, `.xz`), with
            the keys `--instruction_key`, `--input_key` (optional in each record) and `--output_key` (Alpaca's
            layout). `--val_fraction` of the records are held out for validation: the default needs 11 or more.
        out_dir: Where checkpoints and logs go. Default: `out/lora-<model name>`.
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
        lora_r: Rank of each adapter.
        lora_alpha: The adapter's scale is lora_alpha / lora_r.
        lora_dropout: Dropout on the adapter's input.
        lora_query: Adapt the query projection.
        lora_key: Adapt the key projection.
        lora_value: Adapt the value projection.
        lora_projection: Adapt the attention output projection.
        lora_mlp: Adapt the MLP projections (fc_1, fc_2, proj).
        lora_head: Adapt the output head.
        accelerator: `auto` picks CUDA when available, else CPU.
        precision: `bf16-true` (weights, adapter and compute in bf16), `bf16-mixed` (bf16 compute, float32 weights)
            or `32-true`.
        attention: The attention kernel: `auto` takes flash-attn-4 on a Hopper or newer GPU when it is installed and
            suits the model, SDPA otherwise; `sdpa` or `fa4` force one.
        global_batch_size: Examples (or packed sequences) per optimizer step.
        micro_batch_size: Examples per forward/backward pass; gradient accumulation steps = global_batch_size /
            micro_batch_size.
        epochs: Passes over the training examples: the cosine schedule's length, and when to stop.
        max_steps: Train this many optimizer steps instead of `--epochs` (the cosine schedule's length, and when
            to stop).
        learning_rate: Peak learning rate, reached after the warmup.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_steps: Optimizer steps of linear warmup.
        weight_decay: AdamW's decoupled weight decay on the adapter matrices.
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
        seed: Seed of the adapter's initialization, the dropout and the data order.
        resume: `false` starts fresh; `true` or `auto` resumes from the latest complete checkpoint in `out_dir`
            (starting fresh if there is none); a path resumes from that checkpoint. The `--checkpoint_dir` must be
            the base the checkpoint was trained on.
        trust_pickle: Resume from a checkpoint that holds pickled Python objects besides tensors and plain values.
            Unpickling can run arbitrary code: only for checkpoints from a source you trust.
    """
    hparams = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    config = finetune_base(hparams, checkpoint_dir)
    if lora_head and config.tie_embeddings:
        raise ValueError(tied_head_refusal(config.name, "--lora_head true"))
    lora = LoRAConfig(
        lora_r, lora_alpha, lora_dropout, lora_query, lora_key, lora_value, lora_projection, lora_mlp, lora_head
    )
    out_dir = out_dir or Path("out") / f"lora-{config.name}"
    accumulation = gradient_accumulation_steps(global_batch_size, micro_batch_size, 1)
    check_finetune_flags(hparams, out_dir, config.block_size)
    _, compile, attention, attention_note = choose_device(config, accelerator, precision, compile, attention)
    data = instruction_data(hparams, config.block_size, world_size=1)
    hparams.update(out_dir=str(out_dir), world_size=1, model_config=config.to_dict(), compile=compile)
    hparams.update(attention=attention, lora=lora.to_dict(), base=base_record(checkpoint_dir))
    resume = adapter_checkpoint_to_resume(resume, out_dir, hparams)
    logger = choose_logger(logger_name, out_dir, f"lora-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    fabric = L.Fabric(accelerator=accelerator, devices=1, precision=precision, loggers=logger)
    launch(fabric)
    with own_out_dir(fabric, out_dir):
        fabric.print({k: v for k, v in hparams.items() if k not in ("model_config", "base")})
        fabric.print(attention_note)
        fabric.logger.log_hyperparams(hparams)
        main(fabric, config, lora, hparams, data, out_dir, accumulation, resume)


def main(
    fabric: L.Fabric, config, lora: LoRAConfig, hparams: dict, data, out_dir: Path, accumulation: int, resume
) -> None:
    h = hparams
    fabric.seed_everything(h["seed"])
    train_batches, val_batches, max_steps = data.start(fabric, h)

    t0 = time.perf_counter()
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    model.load_state_dict(load_lit_state_dict(Path(h["checkpoint_dir"]) / "lit_model.pth"), strict=True)
    model.reset_parameters()  # the rope cache of an empty-initialized model
    n_trainable = apply_lora(model, lora)  # outside init_module: its empty init would skip the adapter's init
    n_params = sum(p.numel() for p in model.parameters())
    apply_attention(model, h["attention"])
    for i, block in enumerate(model.transformer.h):
        if h["activation_checkpointing"]:
            block = model.transformer.h[i] = checkpoint(block)
        if h["compile"]:
            block.compile()
    fabric.print(
        f"{config.name}: {n_params:,} parameters, {n_trainable:,} of them trainable (LoRA rank {lora.r} on "
        f"{', '.join(t for t in TARGETS if getattr(lora, t))}); loaded in {time.perf_counter() - t0:.1f}s"
    )
    model = fabric.setup(model)
    optimizer = adamw(model, h["learning_rate"], h["weight_decay"], (h["beta1"], h["beta2"]), False, fabric.device)
    optimizer = fabric.setup_optimizers(optimizer)

    state = fresh_state(None, optimizer, hparams)  # its model: the adapter, `lora_state_dict(model)`, when saved
    if resume:
        fabric.print(f"Resuming from {resume}")
        load_adapter_checkpoint(fabric, resume, model, state, h["trust_pickle"])
        restore_position(fabric, state, train_batches, hparams)

    def describe(path: Path) -> str:
        adapter = sum(t.nbytes for t in lora_state_dict(model).values())
        return f" ({path.stat().st_size / 1e6:.2f} MB: adapter {adapter / 1e6:.2f} MB and its optimizer state)"

    def adapter_only(state: dict) -> dict:
        return {**state, "model": lora_state_dict(model)}

    fit(fabric, model, optimizer, train_batches, val_batches, state, accumulation, max_steps, out_dir,
        checkpoint_state=adapter_only, describe_checkpoint=describe)  # fmt: skip


def adapter_checkpoint_to_resume(resume, out_dir: Path, h: dict) -> Optional[Path]:
    """The checkpoint that `--resume` names (None for a fresh start), checked to be a LoRA checkpoint of this base
    model, adapter and run settings: refused before any model is built."""
    path = resume_from(resume, out_dir, h["trust_pickle"])
    if path is None:
        return None
    if resume not in (True, "auto"):  # latest_to_resume checked the digest of what it picked
        verify_checkpoint(path)
    metadata = load_metadata(path, h["trust_pickle"])
    saved = metadata["hparams"]
    if "lora" not in saved or "base" not in saved:  # what it is comes before how it differs
        raise ValueError(f"{path} is not a checkpoint of finetune/lora.py (it has no adapter); pass another --resume")
    check_compatible(path, metadata, h["model_config"], 1, h)
    check_base(saved["base"], Path(h["checkpoint_dir"]), str(path), h["base"])
    if saved["lora"] != h["lora"]:
        diff = {k: (saved["lora"].get(k), v) for k, v in h["lora"].items() if saved["lora"].get(k) != v}
        raise ValueError(
            f"{path} holds an adapter of other settings (checkpoint, now): {diff}; resume with the checkpoint's "
            "--lora_* flags, or pass another --out_dir"
        )
    return path


def load_adapter_checkpoint(fabric: L.Fabric, path: Path, model, state: dict, trust_pickle: bool) -> None:
    """Load the checkpoint `path` (checked by `adapter_checkpoint_to_resume`) into `model` (the adapter) and `state`
    (the rest) in place."""
    remainder = fabric.load(path, state, weights_only=not trust_pickle)
    missing, unexpected = model.load_state_dict(state.pop("model"), strict=False)
    state["model"] = None
    missing = [k for k in missing if "lora_" in k]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if remainder:
        fabric.print(f"Ignored entries of {path.name}: {sorted(remainder)}")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(setup)
