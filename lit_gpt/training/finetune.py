"""What `finetune/lora.py` and `finetune/full.py` share: the checks of their flags and inputs and the instruction data,
both before any work; the record of the base checkpoint a run starts from; and the training loop over instruction
batches (the same step, schedule, validation, checkpoints and stop signals as pretraining: `lit_gpt/training/step.py`,
`lit_gpt/training/lr.py`, `lit_gpt/training/checkpoint.py`, `lit_gpt/signals.py`).

A LoRA checkpoint holds the adapter only; its `base` entry (`base_record`) names the checkpoint directory it was
trained on by the model config and the size and SHA-256 of `lit_model.pth`, so that resuming or merging it onto
other weights is refused (`check_base`).
"""

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from lit_gpt.cli import UserError
from lit_gpt.config import Config
from lit_gpt.data.instruct import (
    InstructionBatches,
    encode_examples,
    find_instruction_files,
    load_instructions,
    split_instructions,
    validation_batches,
)
from lit_gpt.data.separators import Separators, read_separators
from lit_gpt.files import file_sha256
from lit_gpt.signals import StopSignal
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training.checkpoint import (
    check_no_overwrite,
    checkpoint_path,
    find_latest,
    nonfinite_stop_message,
    save_checkpoint,
    save_pruned,
)
from lit_gpt.training.fabric import L
from lit_gpt.training.logger import log_metrics, log_validation, mean_loss, step_metrics
from lit_gpt.training.lr import cosine_lr, warmup_warning
from lit_gpt.training.optimizer import check_optimizer_flags
from lit_gpt.training.step import count_nonfinite, training_step, validate
from lit_gpt.weights import TOKENIZER_FILES, lit_checkpoint_files


def base_record(checkpoint_dir: Path) -> Dict[str, Any]:
    """What identifies the weights of a lit checkpoint directory: its model config, and the size and SHA-256 of its
    `lit_model.pth` (a few seconds for TinyLlama's 4.4 GB); and the SHA-256 of each of its tokenizer files, which
    the examples were encoded with and `scripts/merge_lora.py` copies beside the merged weights."""
    config, model_file = lit_checkpoint_files(checkpoint_dir)
    # the files that make the token ids (generation_config.json does not)
    names = [name for name in TOKENIZER_FILES if name != "generation_config.json"]
    tokenizer = {
        name: file_sha256(Path(checkpoint_dir) / name) for name in names if (Path(checkpoint_dir) / name).is_file()
    }
    return {
        "checkpoint_dir": str(checkpoint_dir),
        "model_config": config.to_dict(),
        "model_bytes": model_file.stat().st_size,
        "model_sha256": file_sha256(model_file),
        "tokenizer_sha256": tokenizer,
    }


def check_base(saved: Dict[str, Any], checkpoint_dir: Path, source: str, record: Optional[Dict[str, Any]] = None):
    """Refuse a `--checkpoint_dir` whose weights or tokenizer files are not those the adapter in `source` was trained
    on (`saved`, its `base_record`); `record` is `checkpoint_dir`'s, when already computed."""
    record = record or base_record(checkpoint_dir)
    if saved.get("model_config") != record["model_config"]:
        what = "another model configuration"
    elif (saved.get("model_bytes"), saved.get("model_sha256")) != (record["model_bytes"], record["model_sha256"]):
        what = (
            f"other weights (lit_model.pth of {record['model_bytes']:,} bytes, SHA-256 {record['model_sha256'][:12]})"
        )
    else:
        then, now = saved.get("tokenizer_sha256"), record.get("tokenizer_sha256")
        if then is None or then == now:  # checkpoints written before the tokenizer was recorded: not checked
            return
        changed = sorted(name for name in {*then, *now} if then.get(name) != now.get(name))
        raise ValueError(
            f"{source} was finetuned on examples encoded with the tokenizer of {saved.get('checkpoint_dir')}; "
            f"--checkpoint_dir {checkpoint_dir} has other tokenizer files (changed, added or missing: "
            f"{', '.join(changed)}). Put back the tokenizer it was finetuned with, or pass that base checkpoint"
        )
    raise ValueError(
        f"{source} is an adapter of the base checkpoint {saved.get('checkpoint_dir')} (lit_model.pth of "
        f"{saved.get('model_bytes', 0):,} bytes, SHA-256 {str(saved.get('model_sha256'))[:12]}); --checkpoint_dir "
        f"{checkpoint_dir} has {what}. Pass the base checkpoint it was trained on"
    )


def fit(
    fabric: L.Fabric,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches,
    val_batches: list,
    state: Dict[str, Any],
    accumulation: int,
    max_steps: int,
    out_dir: Path,
    checkpoint_state: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda state: state,
    describe_checkpoint: Callable[[Path], str] = lambda path: "",
) -> None:
    """Train from `state["step_count"]` to `max_steps` optimizer steps of `accumulation` micro-batches per process.

    `train_batches` yields (input_ids, labels) micro-batches endlessly and has `state_dict()`; `val_batches` is this
    process's list of validation micro-batches. `checkpoint_state(state)` is what a checkpoint saves (LoRA: the
    adapter in place of the model), `describe_checkpoint(path)` what the "Saved" line adds about it.
    """
    h = state["hparams"]
    if (warning := warmup_warning(h["warmup_steps"], max_steps, h["learning_rate"])) and fabric.global_rank == 0:
        print(warning, file=sys.stderr)  # as pretraining does: the default 100 on a run of a few steps
    if state["step_count"] >= max_steps:
        fabric.print(
            f"Nothing to train: the checkpoint is at step {state['step_count']} and this run ends at step {max_steps} "
            "(--max_steps, or --epochs of optimizer steps); raise it to train on"
        )
    # from here on, SIGINT/SIGTERM/SIGUSR1 stop the run at a step boundary
    stop = StopSignal(fabric.device, saved_before=lambda: find_latest(out_dir) is not None)
    iterator = iter(train_batches)
    nonfinite_streak = torch.zeros((), device=fabric.device)
    skipped = torch.zeros((), device=fabric.device)
    tokens = 0  # input tokens (padding included) of this process since the last log or save
    last_log_time, last_log_step, last_log_tokens = time.perf_counter(), state["step_count"], state["tokens_seen"]
    path = None
    while state["step_count"] < max_steps:
        lr = cosine_lr(state["step_count"], h["learning_rate"], h["min_lr"], h["warmup_steps"], max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [fabric.to_device(next(iterator)) for _ in range(accumulation)]
        loss, grad_norm = training_step(
            fabric, model, optimizer, micro_batches, h["grad_clip"], h.get("reshard_after_backward", True)
        )
        tokens += sum(input_ids.numel() for input_ids, _ in micro_batches)  # shapes: no device sync
        state["iter_num"] += accumulation
        state["step_count"] += 1
        step = state["step_count"]
        stopping = stop.agreed() and step < max_steps  # the same answer on every process
        saving = step % h["save_interval"] == 0 or step == max_steps or stopping
        if saving or step % h["log_interval"] == 0 or step == max_steps:
            step_tokens = int(fabric.all_reduce(torch.tensor(tokens, device=fabric.device), reduce_op="sum").item())
            state["tokens_seen"] += step_tokens
            tokens = 0
        nonfinite_streak = count_nonfinite(grad_norm, nonfinite_streak, skipped)

        if step % h["log_interval"] == 0 or step == max_steps:
            loss = mean_loss(fabric, loss)
            state["skipped_steps"] += int(skipped.item())
            skipped.zero_()
            now = time.perf_counter()
            step_time = (now - last_log_time) / (step - last_log_step)
            tokens_per_sec = (state["tokens_seen"] - last_log_tokens) / (now - last_log_time)
            last_log_time, last_log_step, last_log_tokens = now, step, state["tokens_seen"]
            metrics = step_metrics(fabric, state, loss, lr, grad_norm, tokens_per_sec, step_time, max_steps - step)
            log_metrics(fabric, step, max_steps, metrics)
            if nonfinite_streak.item() >= h["max_nonfinite_steps"]:
                raise UserError(nonfinite_stop_message(out_dir, int(nonfinite_streak.item()), step))  # one line

        if step % h["eval_interval"] == 0 or step == max_steps:
            t0 = time.perf_counter()
            val_loss = validate(fabric, model, val_batches, len(val_batches)).item()
            log_validation(fabric, step, val_loss, t0)

        if saving:
            state["train_dataloader"] = train_batches.state_dict()
            state["rng"] = rng_state()
            path = checkpoint_path(out_dir, step)
            with stop.saving(path):
                save_checkpoint(fabric, path, checkpoint_state(state))
            fabric.print(f"Saved {path}{describe_checkpoint(path)}")
            save_pruned(fabric, out_dir, path, h["keep_last"], nonfinite_streak)
        if stopping:
            fabric.print(stop.stopped_message(step, max_steps, path))
            stop.restore()
            return
    stop.restore()
    fabric.print(f"Done: {state['step_count']} steps, {state['tokens_seen']:,} tokens")


def rng_state() -> Dict[str, Any]:
    """The generators a resumed run must continue: LoRA's dropout draws from torch's (CUDA's on a GPU)."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: Dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def restore_position(fabric: L.Fabric, state: Dict[str, Any], train_batches, hparams: Dict[str, Any]) -> None:
    """After a checkpoint was loaded into `state`: the data position and the generators where it left them, and this
    run's settings in place of the checkpoint's."""
    train_batches.load_state_dict(state["train_dataloader"])
    restore_rng(state["rng"])
    state["hparams"] = hparams
    fabric.print(f"Resumed at step {state['step_count']} ({state['tokens_seen']:,} tokens seen)")


def finetune_base(h: Dict[str, Any], checkpoint_dir: Path) -> Config:
    """The model config of the base checkpoint directory `checkpoint_dir`; records in `h` the `--data` files as text
    and the document separators the base model was trained with: the prompts begin the same way
    (lit_gpt/data/separators.py)."""
    h["data"] = [str(p) for p in h["data"]] if isinstance(h["data"], list) else str(h["data"])
    config, _ = lit_checkpoint_files(checkpoint_dir)
    h["separators"] = read_separators(checkpoint_dir).to_dict()
    return config


def check_finetune_flags(h: Dict[str, Any], out_dir: Path, block_size: int) -> None:
    """Refuse flag values of the finetuning scripts that would fail later or lose work (the optimizer's and the
    schedule's first), a `--data` file or folder that is not there, and an `out_dir` of another run: before the run
    prints its settings or touches `out_dir`."""
    check_optimizer_flags(
        h["learning_rate"], h["min_lr"], h["warmup_steps"], h["weight_decay"], (h["beta1"], h["beta2"]), h["grad_clip"]
    )
    only_last = "pass a value above --max_steps to {} only at the last step"
    for flag, hint in [
        ("log_interval", only_last.format("log")),
        ("eval_interval", only_last.format("validate")),
        ("save_interval", only_last.format("save")),
        ("max_nonfinite_steps", "non-finite optimizer steps in a row that stop the run"),
        ("epochs", "passes over the training examples"),
    ]:
        if h[flag] < 1:
            raise ValueError(f"--{flag} {h[flag]} must be at least 1 ({hint})")
    if h["max_steps"] is not None and h["max_steps"] < 1:
        raise ValueError(f"--max_steps {h['max_steps']} must be at least 1; leave it out to train for --epochs")
    if h["max_seq_length"] is not None and h["max_seq_length"] < 1:
        raise ValueError(
            f"--max_seq_length {h['max_seq_length']} must be at least 1; leave it out for the model's block size"
        )
    if h["max_seq_length"] is not None and h["max_seq_length"] > block_size:
        raise ValueError(
            f"--max_seq_length {h['max_seq_length']} is longer than the model's block size {block_size} (its context "
            f"and rotary cache); pass at most {block_size}"
        )
    if h["seed"] < 0:
        raise ValueError(f"--seed {h['seed']} must not be negative (the generators take 0 to 2**32 - 1)")
    if h["keep_last"] is not None and h["keep_last"] < 1:
        raise ValueError(f"--keep_last {h['keep_last']} must be at least 1; leave it out to keep every checkpoint")
    if not 0 < h["val_fraction"] < 1:
        raise ValueError(f"--val_fraction {h['val_fraction']} must be between 0 and 1 (the held-out share)")
    # the files are there (what they hold is read by `instruction_data`, also before any work)
    find_instruction_files(h["data"], problems=[] if h["skip_bad_records"] else None)
    check_no_overwrite(out_dir, h["resume"])


@dataclass
class InstructionData:
    """The examples of a run (`instruction_data`), read and laid out in micro-batches before any work."""

    train: InstructionBatches  # laid out alike for every process; `batches` gives it this process's rank
    val: List[Tuple[torch.Tensor, torch.Tensor]]  # the encoded held-out examples
    layout: Dict[str, Any]  # the arguments of `validation_batches` besides the examples and the rank
    steps_per_epoch: int
    summary: str  # what was read, for the run's output

    def batches(self, rank: int) -> Tuple[InstructionBatches, list]:
        """(this process's train batches, its list of validation micro-batches)."""
        self.train.rank = rank
        return self.train, validation_batches(self.val, **self.layout, rank=rank)

    def start(self, fabric: L.Fabric, h: Dict[str, Any]) -> Tuple[InstructionBatches, list, int]:
        """Print the summary; (this process's train batches, its validation micro-batches, the optimizer steps of the
        run: `--max_steps`, or `--epochs` of them)."""
        fabric.print(self.summary)
        train_batches, val_batches = self.batches(fabric.global_rank)
        max_steps = h["epochs"] * self.steps_per_epoch if h["max_steps"] is None else h["max_steps"]
        return train_batches, val_batches, max_steps


def check_example_ids(examples: List[Tuple[torch.Tensor, torch.Tensor]], h: Dict[str, Any]) -> None:
    """Refuse, before any step, examples holding a token id that the model of `h["checkpoint_dir"]` has no embedding
    for (a tokenizer of a larger vocabulary put beside its weights): the step that reads it would fail."""
    top = max((int(ids.max()) for ids, _ in examples if ids.numel()), default=-1)
    vocab_size = lit_checkpoint_files(Path(h["checkpoint_dir"]))[0].padded_vocab_size
    if top >= vocab_size:
        raise UserError(
            f"--data {h['data']} encodes to token id {top} with the tokenizer in {h['checkpoint_dir']}, but its model "
            f"has embeddings for {vocab_size:,} ids (its padded_vocab_size): the tokenizer files there are not the "
            "model's. Put back the tokenizer the model was trained with"
        )


def instruction_data(h: Dict[str, Any], block_size: int, world_size: int) -> InstructionData:
    """The instruction files `h["data"]` read, split and encoded as `lit_gpt/data/instruct.py` describes, with the run's
    flags and the base model's document separators (`h["separators"]`), and laid out in micro-batches for
    `world_size` processes: before the run prints its settings or touches its out dir, so that a bad record, or data
    too small for the batch sizes, is refused first."""
    max_seq_length = block_size if h["max_seq_length"] is None else h["max_seq_length"]
    tokenizer = Tokenizer(h["checkpoint_dir"])
    separators = Separators.from_dict(h["separators"], f"{h['checkpoint_dir']}/separators.json")
    records = load_instructions(
        h["data"], h["instruction_key"], h["input_key"], h["output_key"], skip_bad_records=h["skip_bad_records"]
    )
    train, val = split_instructions(records, val_fraction=h["val_fraction"], seed=h["seed"])

    def encode(examples):
        return encode_examples(tokenizer, examples, h["template"], max_seq_length, h["mask_prompt"], separators)

    layout = dict(
        micro_batch_size=h["micro_batch_size"], max_seq_length=max_seq_length, padding=h["padding"],
        packing=h["packing"], seed=h["seed"], world_size=world_size,
    )  # fmt: skip
    train_examples, val_examples = encode(train), encode(val)
    check_example_ids(train_examples + val_examples, h)
    train_batches = InstructionBatches(train_examples, **layout)
    validation_batches(val_examples, **layout)  # refuses fewer held-out rows than processes
    accumulation = h["global_batch_size"] // (world_size * h["micro_batch_size"])
    steps_per_epoch = len(train_batches) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_batches.rows)} training rows make no optimizer step of --global_batch_size "
            f"{h['global_batch_size']}; lower it or use more data"
        )
    summary = (
        f"{len(records):,} instruction records ({len(train):,} for training, {len(val):,} held out) from {h['data']}; "
        f"template {h['template']!r}, {separators}; {steps_per_epoch} optimizer steps per epoch"
    )
    return InstructionData(train_batches, val_examples, layout, steps_per_epoch, summary)
