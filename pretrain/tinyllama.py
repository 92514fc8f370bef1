"""Pretrain a Llama-style model (TinyLlama-1.1B by default) on SlimPajama and Starcoder with FSDP through Fabric.

With no arguments this is TinyLlama's recipe on every local GPU. A small run on CPU, and its resumption:

    python pretrain/tinyllama.py --model_name micro-llama --data_dir data --accelerator cpu --devices 1 \
        --precision 32-true --global_batch_size 8 --micro_batch_size 4 --max_tokens 81920 --warmup_steps 4 \
        --max_steps 20 --save_interval 10
    python pretrain/tinyllama.py --model_name micro-llama --data_dir data --accelerator cpu --devices 1 \
        --precision 32-true --global_batch_size 8 --micro_batch_size 4 --max_tokens 81920 --warmup_steps 4 \
        --save_interval 10 --resume auto

(40 steps of 8 × 256 tokens in all: the first command stops after 20, the second resumes the same schedule.)

The data directory holds litdata chunks from `scripts/prepare_slimpajama.py` and `scripts/prepare_starcoder.py`:
`slimpajama/train`, `slimpajama/val` and `starcoder`. Checkpoints are described in `lit_gpt/training/checkpoint.py`.
"""

import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import UserError, check_command_line, stop_quietly_before_training  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below
stop_quietly_before_training(__name__)  # Ctrl-C before the loop: one line, not a traceback

import torch  # noqa: E402

from lit_gpt.config import Config, check_same_architecture, checkpoint_config_file  # noqa: E402
from lit_gpt.data.loaders import (  # noqa: E402
    BatchIdCheck,
    DataWatch,
    check_data_dir,
    check_prepared,
    check_token_ids,
    cycle_full_batches,
    data_contents,
    data_eos_id,
    data_fingerprints,
    data_separators,
    data_sources,
    mixture_dataloader,
    recorded_sources,
    val_dataloader,
    vocab_note,
)
from lit_gpt.data.order import ORDER, GlobalBatchLoader, SequenceLog, trim_sequence_log  # noqa: E402
from lit_gpt.documents import check_document_flags  # noqa: E402
from lit_gpt.flops import flops_per_token, mfu, num_parameters  # noqa: E402
from lit_gpt.hf import read_model_config  # noqa: E402
from lit_gpt.model import GPT, init_weights  # noqa: E402
from lit_gpt.signals import StopSignal, die_with_launcher, resume_command  # noqa: E402
from lit_gpt.training.checkpoint import (  # noqa: E402
    CheckpointSaver,
    check_no_overwrite,
    checkpoint_path,
    find_latest,
    fresh_state,
    latest_to_resume,
    load_checkpoint,
    load_lit_weights,
    nonfinite_stop_message,
    on_rank_zero,
    own_out_dir,
)
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.training.float8 import precompute_scales_after_step  # noqa: E402
from lit_gpt.training.launch import check_processes, choose_device, cpu_has_bf16, launch  # noqa: E402
from lit_gpt.training.logger import log_metrics, log_validation, mean_loss, step_metrics  # noqa: E402
from lit_gpt.training.lr import (  # noqa: E402
    Schedule,
    anneal_start,
    check_schedule_flags,
    make_schedule,
    schedule_change_note,
    warmup_warning,
)
from lit_gpt.training.optimizer import adamw, check_optimizer_flags  # noqa: E402
from lit_gpt.training.parallel import model_parallel_fabric, reshard_choices  # noqa: E402
from lit_gpt.training.resources import check_cpu_run  # noqa: E402
from lit_gpt.training.spikes import SpikeGuard, sequence_ids, spike_stop_message  # noqa: E402
from lit_gpt.training.step import count_nonfinite, document_bounds, training_step, validate  # noqa: E402
from lit_gpt.training.watchdog import Watchdog, hang_for_test  # noqa: E402
from lit_gpt.weights import check_weights, lit_checkpoint_files, load_lit_state_dict  # noqa: E402

# above this many parameters the model is created on the meta device and initialized shard by shard after sharding;
# below, every process initializes the whole model with the same seed (identical across world sizes)
META_INIT_PARAMS = 100_000_000


def setup(
    model_name: Optional[str] = None,
    model_config: Optional[Path] = None,
    data_dir: str = "data",
    data_weights: Tuple[float, float] = (0.693584, 0.306416),
    train_data: Optional[Union[Dict[str, float], str]] = None,
    val_data: Optional[str] = None,
    out_dir: Optional[Path] = None,
    devices: Union[int, Literal["auto"]] = "auto",
    num_nodes: int = 1,
    sharding: Literal["full", "hybrid"] = "full",
    reshard_after_forward: Optional[bool] = None,
    reshard_after_backward: Optional[bool] = None,
    accelerator: Literal["auto", "cuda", "gpu", "cpu"] = "auto",
    precision: Literal["bf16-mixed", "bf16-true", "32-true"] = "bf16-mixed",
    fp8: Optional[Literal["tensorwise", "rowwise", "tokenwise"]] = None,
    fp8_fast_accum: bool = True,
    attention: Literal["auto", "sdpa", "fa4"] = "auto",
    document_mask: bool = False,
    document_positions: bool = False,
    eos_id: Optional[int] = None,
    global_batch_size: int = 512,
    micro_batch_size: int = 4,
    max_tokens: int = int(3e12),
    max_steps: Optional[int] = None,
    block_size: Optional[int] = None,
    learning_rate: float = 4e-4,
    min_lr: float = 4e-5,
    warmup_steps: int = 2000,
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine",
    decay_fraction: Optional[float] = None,
    decay_steps: Optional[int] = None,
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt",
    anneal_steps: Optional[int] = None,
    z_loss: float = 0.0,
    weight_decay: float = 0.1,
    decay_norms_and_biases: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    log_interval: int = 1,
    eval_interval: int = 1000,
    eval_iters: int = 100,
    eval_tasks: Optional[str] = None,
    eval_tasks_interval: Optional[int] = None,
    eval_tasks_limit: Optional[float] = None,
    eval_tasks_tokenizer_dir: Optional[Path] = None,
    save_interval: int = 1000,
    keep_last: Optional[int] = None,
    async_save: Union[bool, Literal["auto"]] = "auto",
    logger_name: Literal["tensorboard", "csv", "wandb"] = "tensorboard",
    compile: Optional[bool] = None,
    activation_checkpointing: bool = False,
    num_workers: int = 1,
    log_sequences: bool = False,
    max_nonfinite_steps: int = 10,
    spike_factor: Optional[float] = None,
    spike_window: int = 100,
    spike_warmup: int = 100,
    max_spike_steps: int = 10,
    watchdog_timeout: Optional[float] = None,
    seed: int = 3407,
    resume: Union[bool, Literal["auto"], Path] = False,
    initial_checkpoint_dir: Optional[Path] = None,
    trust_pickle: bool = False,
) -> None:
    """Pretrain a model from the registry on a weighted mix of SlimPajama and Starcoder.

    Args:
        model_name: Any name in `lit_gpt/config.py` (`tiny-llama-1.1b`, `micro-llama`, `Llama-2-7b-hf`, ...).
            Default: `tiny-llama-1.1b`, or with `--initial_checkpoint_dir` the model its `lit_config.json` describes
            (which need not be in the registry).
        model_config: Instead of --model_name: a model's config file, the `config.json` of a Hugging Face model of
            the llama (SmolLM2 too), qwen2, qwen3 or olmo2 families, or a `lit_config.json`. A setting that this
            project does not compute (a sliding window, attention dropout, another RoPE scaling than Llama 3's,
            experts) is refused by name. The model is named after the file's folder.
        data_dir: Folder (or object-store URL such as s3://bucket/data) with the litdata chunk folders
            `slimpajama/train`, `slimpajama/val` and `starcoder`.
        data_weights: Sampling weights of slimpajama/train and starcoder (TinyLlama's token ratio by default).
        train_data: Your own mix instead of `--data_dir`'s two sources: prepared litdata folders (local or object
            store) with their sampling weights, `"{data/slimpajama/train: 0.69, data/starcoder: 0.31}"`, or a YAML
            file holding such a mapping. A resumed run must name the same folders with the same weights.
        val_data: The prepared validation folder. Default: `--data_dir`'s slimpajama/val.
        out_dir: Where checkpoints and logs go. Default: `out/<model_name>`.
        devices: Processes (GPUs) per node; `auto` = every local GPU, or 1 process on a machine without one.
        num_nodes: Number of nodes; launch one command per node (torchrun, SLURM's srun, `fabric run`), see
            tutorials/multi_node.md.
        sharding: `full` shards weights, gradients and optimizer states over every process (least memory);
            `hybrid` shards over the devices of each node and replicates across nodes (less traffic between nodes).
        reshard_after_forward: Free each block's gathered weights after its forward pass and gather them again for
            its backward (less memory, one more all-gather per block and micro-batch).
        reshard_after_backward: Free each block's gathered weights after the backward pass of every micro-batch
            (true) or only after the last micro-batch of an optimizer step (false: the weights gathered for one
            micro-batch serve the next). Default for both: off, so one all-gather per optimizer step, with one
            process per shard group or when the model's bf16 weights take at most 5% of a GPU's memory
            (TinyLlama-1.1B: 2.2 GB); on otherwise (`lit_gpt.training.parallel.keep_weights_gathered`). Set both on a
            cluster of GPUs of different memory sizes, where processes could otherwise decide differently.
        accelerator: `auto` picks CUDA when available, else CPU.
        precision: `bf16-mixed` (bf16 compute, float32 master weights and gradient reduction), `bf16-true` or
            `32-true`.
        fp8: Float8 training of the transformer blocks' linear layers: torchao's `tensorwise` (weights all-gathered
            in float8) or `rowwise` (finer scales, slower), or `tokenwise` (this project's own: a scale per token,
            found in the same pass as the norm or SwiGLU before it; `lit_gpt/training/float8.py`). Needs a GPU of
            compute capability 8.9+ (Ada, Hopper, Blackwell); torchao's (`pip install -e ".[hopper]"`) for the first
            two. Off by default; checkpoints hold ordinary
            weights either way, so a run may resume with or without it (tutorials/pretrain_tinyllama.md).
        fp8_fast_accum: With --fp8, accumulate the backward float8 products (input and weight gradients) in cuBLAS's
            fast mode, as the forward product always is: 2% faster, the loss as close to bf16's as bf16 runs are to
            each other (tutorials/performance.md). False keeps torchao's precise accumulation in backward.
        attention: The attention kernel: `auto` takes flash-attn-4 on a Hopper or newer GPU when it is installed
            and suits the model (bf16, head size 8..256), SDPA otherwise; `sdpa` or `fa4` force one. Generation
            always uses SDPA.
        document_mask: Attend only within each document of the packed training rows (each document ends with its
            end-of-document token) instead of across the documents of a row; off by default, as in lit-gpt and
            TinyLlama (tutorials/pretrain_tinyllama.md, "Attention within documents"). A resumed run keeps it.
        document_positions: With --document_mask, restart the rotary positions at 0 at each document instead of
            counting on through the row.
        eos_id: The end-of-document token id that --document_mask splits at, for data whose prepare.json records
            none (prepared before it was recorded, or in an object store). Default: the one the data folders'
            prepare.json records (the tokenizer's eos id at preparation); another id than that is refused.
        global_batch_size: Sequences per optimizer step across all devices and nodes (not per node). Gradient
            accumulation steps = global_batch_size / (world size × micro_batch_size), which must be a whole number.
        micro_batch_size: Sequences per forward/backward pass on one device.
        max_tokens: Train on this many tokens (3 trillion by default): the schedule's length, and when to stop.
        max_steps: Stop earlier, after this many optimizer steps. The schedule still spans `max_tokens`, so a run
            stopped here and resumed with a larger `max_steps` (or none) is the same run as one that did not stop.
        block_size: Train on sequences of this many tokens instead of the model's `block_size` (also the model's
            context length, stored in the checkpoint's config). Default: the model's.
        learning_rate: Peak learning rate, reached after the warmup.
        min_lr: Learning rate at the end of the cosine decay (or of WSD's, or an anneal's).
        warmup_steps: Optimizer steps of linear warmup.
        lr_schedule: After the warmup: `cosine` decays over the whole run (TinyLlama's); `wsd` (warmup-stable-decay)
            holds the peak and decays only over the run's last steps, so that any checkpoint of its stable phase can
            be annealed (--anneal_steps) instead of fixing the run's length in advance; `constant` holds the peak.
            A resumed run whose schedule gives another learning rate than the checkpoint's is noted.
        decay_fraction: With `wsd`: the share of the schedule's steps (--max_tokens) that decay. Default: 0.2.
        decay_steps: With `wsd`: the optimizer steps that decay, instead of --decay_fraction.
        decay_shape: The shape of WSD's decay and of an anneal, from the peak to --min_lr: `linear`, `cosine` or
            `1-sqrt` (1 - sqrt(progress), Hägele et al. 2024).
        anneal_steps: Branch the end of a run off a checkpoint of its stable phase (`wsd` or `constant`): resume it
            with `--resume out/<run>/step-XXXXXXXX.pth --out_dir <new dir> --anneal_steps N`, which continues its
            model, optimizer and data position and decays the learning rate from the peak to --min_lr over N steps
            (--decay_shape), then stops; --max_tokens and WSD's length flags do not apply. An interrupted anneal
            resumes with the same --anneal_steps (tutorials/pretrain_tinyllama.md).
        z_loss: Add this multiple of the mean log²Z of the output softmax to the training loss (PaLM's z-loss, to
            keep the logits from drifting; 1e-4 is usual), computed in the fused cross-entropy. The logged training
            loss includes it, the validation loss does not. 0 (off) by default.
        weight_decay: AdamW's decoupled weight decay, applied to the weight matrices and embeddings.
        decay_norms_and_biases: Also decay the norm weights and biases (1-D parameters); off by default.
        beta1: AdamW's beta1.
        beta2: AdamW's beta2.
        grad_clip: Clip the global gradient norm to this value (0 disables clipping).
        log_interval: Optimizer steps between log lines (loss, learning rate, grad norm, throughput, MFU, memory).
        eval_interval: Optimizer steps between validation runs on slimpajama/val.
        eval_iters: Micro-batches per process in each validation run.
        eval_tasks: Also evaluate lm-evaluation-harness tasks (comma-separated names, or task YAML files) during
            training, each process on its share of the examples, and log `eval/<task>/<metric>`
            (tutorials/evaluation.md). Needs `pip install -e '.[eval]'`. Off by default.
        eval_tasks_interval: Optimizer steps between task evaluations (and at the last step). Default: --eval_interval.
        eval_tasks_limit: Evaluate only the first this many examples of each task (a value below 1 is a fraction).
        eval_tasks_tokenizer_dir: The tokenizer the data was prepared with, which --eval_tasks encodes the tasks with.
        save_interval: Optimizer steps between checkpoints (one is also written at the end, and when a run is
            stopped by SIGINT, SIGTERM or SIGUSR1: it finishes the optimizer step, saves, prints the command that
            resumes it and exits with code 0).
        keep_last: Keep only this many of the newest checkpoints in `out_dir`, deleting older ones after each
            save (the newest complete one, which `--resume auto` takes, is never deleted). Default: keep all.
        async_save: Write checkpoints in the background: training stops only while the state is copied to (pinned)
            CPU memory, and goes on while the copy is written; a checkpoint appears under its name only once every
            process has written it. A stop signal and the end of training wait for the write in flight. `auto`:
            off for now; it becomes on for CUDA once a GPU measurement shows it stops training for at most 10% of
            a synchronous save (dev/device/async_save.sh; tutorials/multi_node.md).
        logger_name: `tensorboard`, `csv`, or `wandb` (offline unless an API key is configured).
        compile: `torch.compile` each transformer block. Default: on for CUDA, off for CPU.
        activation_checkpointing: Recompute each block's activations in the backward pass to save memory.
        num_workers: Data-loader worker processes per device. One reads a micro-batch of tokenized chunks in
            milliseconds (the log's `data wait`). A resumed run may use another number, as it may another
            --devices, --num_nodes or --micro_batch_size: every step trains on the sequences it would have
            (lit_gpt/data/order.py; tutorials/pretrain_tinyllama.md, "Resuming on another number of GPUs").
        log_sequences: Write the identity of every sequence each process trains on, one JSON line per optimizer
            step, to `out_dir/sequences/rank-<rank>.jsonl`: the number of its folder in the run's train_sources,
            its index in that folder, and a digest of its tokens (`lit_gpt.data.order.SequenceLog`).
        max_nonfinite_steps: Stop when this many optimizer steps in a row had a non-finite gradient norm (each
            one is skipped: no update). Checked at log steps.
        spike_factor: The spike guard: skip (no update, as a non-finite step; it still counts as a step of the
            schedule) an optimizer step whose loss or gradient norm exceeds this many times the median of the last
            --spike_window applied steps, e.g. 3. Each is logged with its step and the identity of its sequences.
            Off by default (tutorials/multi_node.md says when to turn it on).
        spike_window: Applied optimizer steps whose median the spike guard compares with.
        spike_warmup: Applied optimizer steps recorded before the spike guard acts (the loss falls fast at first).
        max_spike_steps: Stop when this many optimizer steps in a row were skipped by the spike guard, with the
            command that resumes. Checked at log steps.
        watchdog_timeout: Seconds without a completed optimizer step after which every process writes its Python
            stacks and last collective to `out_dir/logs/hang-rank<R>.txt` and exits with code 124, for the scheduler
            to restart the job with `--resume auto`. Default: 20 × the median step time, at least 10 minutes (30
            before the first steps are timed); 0 turns the watchdog off (lit_gpt/training/watchdog.py).
        seed: Seed of the weight initialization and the data order.
        resume: `false` starts fresh; `true` or `auto` resumes from the latest complete checkpoint in `out_dir`
            (starting fresh if there is none); a path resumes from that checkpoint.
        initial_checkpoint_dir: A lit checkpoint directory (`lit_model.pth` + `lit_config.json`, for example from
            `scripts/convert_hf_checkpoint.py`) whose weights replace the random initialization, to continue
            pretraining a public model. The optimizer and the data start fresh. Ignored when a run resumes.
        trust_pickle: Resume from a checkpoint that holds pickled Python objects besides tensors and plain values
            (in a single file, `meta.pt`, or a sharded checkpoint's `.metadata`), which a safe load refuses.
            Unpickling can run arbitrary code: only for checkpoints from a source you trust. This script's own
            checkpoints never need it.
    """
    hparams = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    config = choose_model_config(model_name, model_config, block_size, initial_checkpoint_dir)
    hparams["model_name"] = model_name = config.name
    out_dir = out_dir or Path("out") / model_name
    # every refusal before any note, output or work; the data's last, as they read the folders
    world_size, accumulation = check_processes(devices, num_nodes, accelerator, global_batch_size, micro_batch_size)
    check_loop_flags(hparams)
    check_resume(resume, out_dir)
    run_steps = planned_steps(config, global_batch_size, max_tokens, max_steps)
    if anneal_steps is None:  # a WSD decay that would overlap the warmup, refused now rather than after the start
        make_schedule(lr_schedule, learning_rate, min_lr, warmup_steps, max_tokens // (global_batch_size *
                      config.block_size), decay_fraction, decay_steps, decay_shape)  # fmt: skip
    else:
        hparams["lr_schedule"] = lr_schedule = "wsd"  # an anneal is a WSD decay from the checkpoint's step
    device, compile, attention, attention_note = choose_device(config, accelerator, precision, compile, attention, fp8)
    check_document_flags(document_mask, document_positions, eos_id)
    if device.type != "cuda":  # refuse what would not fit or would take hours per step, before the data or the model
        check_cpu_run(config, precision, micro_batch_size, global_batch_size, world_size // num_nodes, num_nodes,
                      activation_checkpointing)  # fmt: skip
    folders = check_data(hparams, config, initial_checkpoint_dir)
    if eval_tasks:  # after the data's checks: the tasks are encoded as the data's documents were (h["separators"])
        check_eval_flags(hparams, config)

    shard_size = world_size // num_nodes if sharding == "hybrid" else world_size
    reshard_after_forward, reshard_after_backward = reshard_choices(
        reshard_after_forward, reshard_after_backward, num_parameters(config, True), shard_size, device, precision
    )
    fabric = model_parallel_fabric(
        accelerator, devices, num_nodes, precision, world_size, logger_name, out_dir,
        f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}", compile=compile,
        activation_checkpointing=activation_checkpointing, sharding=sharding, devices_per_node=world_size // num_nodes,
        reshard_after_forward=reshard_after_forward, attention=attention, fp8=fp8, fp8_fast_accum=fp8_fast_accum,
    )  # fmt: skip
    die_with_launcher()  # the processes fabric.launch() starts end with this one, however it ends
    launch(fabric)
    with own_out_dir(fabric, out_dir):  # before anything is written there
        # notes on a run that goes ahead, after every check above: a refused run prints its error line alone
        for note in run_notes(hparams, config, run_steps, folders, device):
            fabric.print(note, file=sys.stderr)
        hparams.update(out_dir=str(out_dir), world_size=world_size, model_config=config.to_dict(), compile=compile)
        hparams.update(reshard_after_forward=reshard_after_forward, reshard_after_backward=reshard_after_backward)
        hparams.update(attention=attention, data_order=ORDER)  # the data position is a global cursor
        hparams.update(async_save=async_save if async_save != "auto" else False)  # auto: see the docstring
        fabric.print(hparams)
        mask = f"within documents (eos id {hparams['eos_id']})" if document_mask else "across documents"
        fabric.print(f"{attention_note}; float8: {fp8 or 'off'}; attention {mask}")
        fabric.logger.log_hyperparams(hparams)
        main(fabric, config, hparams, out_dir, accumulation, resume)


# The checks of setup's flags by concern, in the order of --help (setup calls them cheapest first, the data last)


def check_data(h: Dict[str, Any], config: Config, initial_checkpoint_dir: Optional[Path]) -> List[str]:
    """Refuse training or validation data that is not prepared, holds token ids the model has no embedding for, or
    (with --document_mask) no end-of-document id to split at; record in `h` what the run reads (its sources, the
    validation folder, the eos id, the document separators) instead of the data flags it does not use. Returns the
    data folders. The separators come last: a convention other than that of `initial_checkpoint_dir`'s weights is a
    note."""
    train_data, val_data = h["train_data"], h["val_data"]
    train_sources, val_dir = data_sources(h["data_dir"], h["data_weights"], train_data, val_data)
    if train_data is None and val_data is None:
        check_data_dir(h["data_dir"])
    else:
        check_prepared([folder for folder, _ in train_sources], "--train_data" if train_data else "--data_dir")
        check_prepared([val_dir], "--val_data" if val_data else "--data_dir")
    folders = [*(folder for folder, _ in train_sources), val_dir]
    check_token_ids(folders, config.padded_vocab_size, config.name)
    if h["document_mask"]:
        h["eos_id"] = data_eos_id(folders, h["eos_id"], config.padded_vocab_size)  # validation is masked alike
    # the settings printed and saved name the data the run reads: --train_data replaces --data_dir's training sources
    # and --data_weights, --val_data its validation split
    del h["data_weights" if train_data is not None else "train_data"]
    if val_data is None:
        del h["val_data"]
    elif train_data is not None:
        del h["data_dir"]
    h.update(train_sources=[list(source) for source in train_sources], val_dir=val_dir)
    # what the sources held (index.json's digests): a resume on a folder prepared again since is refused
    h["train_fingerprints"] = data_fingerprints([folder for folder, _ in train_sources])
    h["train_contents"] = data_contents([folder for folder, _ in train_sources])  # and of the tokens in the chunks
    # the convert script writes it next to lit_config.json, for generation and finetuning (lit_gpt/data/separators.py)
    h["separators"] = data_separators(folders, initial_checkpoint_dir).to_dict()
    return folders


def planned_steps(config: Config, global_batch_size: int, max_tokens: int, max_steps: Optional[int]) -> int:
    """The optimizer steps this run takes: those of `--max_tokens` (the schedule's length), or fewer with
    `--max_steps`; refused when there would be none."""
    tokens_per_step = global_batch_size * config.block_size
    if max_tokens < tokens_per_step:  # the run would end at once, after 0 steps
        raise ValueError(
            f"--max_tokens {max_tokens:,} is less than one optimizer step of {tokens_per_step:,} tokens "
            f"(--global_batch_size {global_batch_size} × {config.block_size}-token sequences): there would be no step "
            "to train. Raise --max_tokens, or limit the run with --max_steps instead"
        )
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max_steps {max_steps} must be at least 1; leave it out to train for --max_tokens")
    return max_tokens // tokens_per_step if max_steps is None else min(max_steps, max_tokens // tokens_per_step)


def check_loop_flags(h: Dict[str, Any]) -> None:
    """Refuse the optimizer's and the schedule's flags, the loop's counts, the seed and --keep_last where they would
    fail later or lose work."""
    spike = (h["spike_window"], h["spike_warmup"], h["max_spike_steps"])
    check_counts(h["log_interval"], h["eval_interval"], h["eval_iters"], h["save_interval"], h["max_nonfinite_steps"],
                 spike)  # fmt: skip
    if h["watchdog_timeout"] is not None and not h["watchdog_timeout"] >= 0:
        raise ValueError(f"--watchdog_timeout {h['watchdog_timeout']} must be a number of seconds (0 turns the "
                         "watchdog off); leave it out for the default, 20 step times, at least 10 minutes")  # fmt: skip
    if h["spike_window"] > 100_000:
        raise ValueError(f"--spike_window {h['spike_window']} is more than the 100,000 steps the spike guard keeps on "
                         "the device; a few hundred steps make a steady median")  # fmt: skip
    if h["spike_factor"] is not None and not h["spike_factor"] > 1:
        raise ValueError(f"--spike_factor {h['spike_factor']} must be above 1 (a multiple of the recent median, e.g. "
                         "3); leave it out to turn the spike guard off")  # fmt: skip
    check_optimizer_flags(
        h["learning_rate"], h["min_lr"], h["warmup_steps"], h["weight_decay"], (h["beta1"], h["beta2"]), h["grad_clip"]
    )
    check_schedule_flags(h["lr_schedule"], h["decay_fraction"], h["decay_steps"], h["anneal_steps"], h["resume"])
    if not h["z_loss"] >= 0:
        raise ValueError(f"--z_loss {h['z_loss']} must not be negative (the weight of log²Z in the loss; 0 is off)")
    if h["seed"] < 0:
        raise ValueError(f"--seed {h['seed']} must not be negative (the generators take 0 to 2**32 - 1)")
    if h["keep_last"] is not None and h["keep_last"] < 1:
        raise ValueError(f"--keep_last {h['keep_last']} must be at least 1 (the checkpoint to resume from); leave it "
                         "out to keep every checkpoint")  # fmt: skip


def check_eval_flags(h: Dict[str, Any], config: Config) -> None:
    """Refuse --eval_tasks that could not run (lm-evaluation-harness missing, no tokenizer, a missing task file) in
    one line before any work; the interval defaults to --eval_interval."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--eval_tasks needs lm-evaluation-harness: `pip install -e '.[eval]'`")
    if h["eval_tasks_interval"] is None:
        h["eval_tasks_interval"] = h["eval_interval"]
    if h["eval_tasks_interval"] < 1 or (h["eval_tasks_limit"] is not None and h["eval_tasks_limit"] <= 0):
        raise UserError("--eval_tasks_interval must be at least 1 and --eval_tasks_limit positive")
    if h["eval_tasks_limit"] is not None and h["eval_tasks_limit"] >= 1:
        h["eval_tasks_limit"] = int(h["eval_tasks_limit"])
    from lit_gpt.harness import check_eval_tasks  # lm-eval: imported only by a run that evaluates tasks

    check_eval_tasks(h["eval_tasks"], h["eval_tasks_tokenizer_dir"], config.padded_vocab_size)


def check_resume(resume: Union[bool, str, Path], out_dir: Path) -> None:
    """Refuse a fresh run into an `out_dir` of an earlier one, and a resume from a checkpoint older than some in
    `out_dir`: either would overwrite them one by one. A checkpoint path that does not exist is refused here, before
    anything is printed or written (what it holds is checked once Fabric has started: `load_checkpoint`)."""
    if resume not in (False, True, "auto") and not Path(resume).exists():
        raise FileNotFoundError(f"No checkpoint at {resume}; pass `--resume auto` to pick the latest in --out_dir")
    check_no_overwrite(out_dir, resume)


def run_notes(h: Dict[str, Any], config: Config, run_steps: int, folders: List[str], device: torch.device) -> list:
    """What a run that goes ahead says first, on stderr: a warmup that does not fit the run, a model of more token ids
    than the data's tokenizer, bf16 on a CPU that computes it slowly: those that apply."""
    precision = h["precision"]
    notes = [warmup_warning(h["warmup_steps"], run_steps, h["learning_rate"])]
    notes.append(vocab_note(folders, config.vocab_size, config.name))
    if precision != "32-true" and device.type != "cuda" and not cpu_has_bf16():  # --accelerator cpu, or no GPU
        notes.append(f"Note: --precision {precision} on a CPU without bf16 instructions is slow; pass 32-true")
    return [note for note in notes if note]


def choose_model_config(
    model_name: Optional[str],
    model_config: Optional[Path],
    block_size: Optional[int],
    initial_checkpoint_dir: Optional[Path],
) -> Config:
    """The registry's `model_name` (TinyLlama by default), the config file `model_config`, or the config of
    `initial_checkpoint_dir` when neither is given; one whose architecture or weights differ from the checkpoint's is
    refused (before any model is built)."""
    overrides = {"block_size": block_size} if block_size is not None else {}
    if model_name is not None and model_config is not None:
        raise ValueError(f"--model_name {model_name} and --model_config {model_config} both name the model; pass one")
    chosen = None
    if model_config is not None:
        chosen = Config(**{**read_model_config(model_config).to_dict(), **overrides})
    elif model_name is not None:
        chosen = Config.from_name(model_name, **overrides)
    if initial_checkpoint_dir is None:
        return chosen or Config.from_name("tiny-llama-1.1b", **overrides)
    saved_config, model_file = lit_checkpoint_files(initial_checkpoint_dir)
    config = chosen or Config(**{**saved_config.to_dict(), **overrides})
    source = str(checkpoint_config_file(model_file.parent))
    check_same_architecture(
        config, saved_config, source, "pass the --model_name of the model in --initial_checkpoint_dir, or leave it out"
    )
    shapes = {k: v.shape for k, v in load_lit_state_dict(model_file).items()}
    hint = f"Pass the --model_name of the model there (its config file says {saved_config.name!r}), or leave it out."
    check_weights(shapes, config, str(model_file), hint)
    return config


def check_counts(
    log_interval: int, eval_interval: int, eval_iters: int, save_interval: int, max_nonfinite: int, spike=(100, 1, 1)
) -> None:
    """Refuse a count of steps that is not positive before any work (the loop takes `step % interval`)."""
    spike_counts = zip(("spike_window", "spike_warmup", "max_spike_steps"), spike,
                       ("applied steps the spike guard compares with", "steps recorded before the spike guard acts",
                        "guarded optimizer steps in a row that stop the run"))  # fmt: skip
    only_last = "pass a value above --max_steps to {} only at the last step"
    for flag, value, hint in [
        ("log_interval", log_interval, only_last.format("log")),
        ("eval_interval", eval_interval, only_last.format("validate")),
        ("eval_iters", eval_iters, "micro-batches per process in each validation run"),
        ("save_interval", save_interval, only_last.format("save")),
        ("max_nonfinite_steps", max_nonfinite, "non-finite optimizer steps in a row that stop the run"),
        *spike_counts,
    ]:
        if value < 1:
            raise ValueError(f"--{flag} {value} must be at least 1 ({hint})")


def main(fabric: L.Fabric, config: Config, hparams: dict, out_dir: Path, accumulation: int, resume) -> None:
    h = hparams
    if fabric.global_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    fabric.seed_everything(h["seed"])  # same seed on every rank so that every process initializes identically
    t0 = time.perf_counter()
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params < META_INIT_PARAMS:
        model.to_empty(device=fabric.device)
        init_weights(model, config.n_layer, config.n_embd)
    model = fabric.setup(model)
    if n_params >= META_INIT_PARAMS:
        init_weights(model, config.n_layer, config.n_embd)  # on the shards, with DTensor's rank-consistent RNG
    fabric.print(f"{config.name}: {n_params:,} parameters, initialized in {time.perf_counter() - t0:.1f}s")

    betas = (h["beta1"], h["beta2"])
    optimizer = adamw(model, h["learning_rate"], h["weight_decay"], betas, h["decay_norms_and_biases"], fabric.device)
    if h["fp8"]:
        precompute_scales_after_step(optimizer, model)
    optimizer = fabric.setup_optimizers(optimizer)

    batch_size, n_workers, block = h["micro_batch_size"], h["num_workers"], config.block_size
    val_loader = val_dataloader(h["val_dir"], block, batch_size, n_workers)
    if len(val_loader) == 0:  # fail now, not at the first validation after hours of training
        raise ValueError(
            f"{h['val_dir']} has fewer than {fabric.world_size * batch_size} blocks of {block + 1} "
            f"tokens, one micro-batch for each of the {fabric.world_size} processes: validation would have nothing "
            "to run on. Prepare a larger validation split, or lower --micro_batch_size."
        )

    saved_schedule = None  # the schedule recorded in the checkpoint resumed from
    state = fresh_state(model, optimizer, hparams, spike_guard=None)  # the spike guard's statistic (training/spikes.py)
    verify = resume not in (True, "auto")  # latest_to_resume checks the digests of what it picks
    if resume in (True, "auto"):  # on rank 0, which reads every byte of the checkpoints it checks
        resume = on_rank_zero(fabric, lambda: latest_to_resume(out_dir, h["trust_pickle"], fabric.print))
        fabric.print(f"Resuming from {resume}" if resume else f"No checkpoint in {out_dir}: starting fresh")
        if not resume and h["anneal_steps"] is not None:
            raise ValueError(f"--anneal_steps: {out_dir} holds no checkpoint to continue an anneal from; pass --resume "
                             "with a checkpoint of the stable run to branch one off it")  # fmt: skip
    if not resume and h["initial_checkpoint_dir"]:  # checked against the model in setup()
        model_file = Path(h["initial_checkpoint_dir"]) / "lit_model.pth"
        load_lit_weights(fabric, model, model_file)
        fabric.print(f"Initialized the weights from {model_file}")
    if resume:
        load_checkpoint(fabric, Path(resume), state, config.to_dict(), h["trust_pickle"], recorded_sources, verify)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        saved, state["hparams"] = state["hparams"], hparams
        same_out_dir = Path(resume).resolve().parent == out_dir.resolve()
        hparams["anneal_from"] = anneal_start(resume, saved, state["step_count"], h["anneal_steps"], same_out_dir)
        saved_schedule = saved.get("lr_schedule_resolved")
        if saved.get("z_loss", 0.0) != h["z_loss"]:
            fabric.print(f"Note: {resume} was trained with --z_loss {saved.get('z_loss', 0.0)}, this run has "
                         f"{h['z_loss']}: the training loss changes at this step", file=sys.stderr)  # fmt: skip
        fabric.print(f"Resumed at step {state['step_count']} ({state['tokens_seen']:,} tokens seen)")
    saved_position = state["train_dataloader"]
    if saved_position is not None and saved_position.get("order") != ORDER:
        # written before the global order, at this number of processes (`check_compatible`): litdata's position
        if h["log_sequences"]:
            raise ValueError(f"--log_sequences: {resume} holds litdata's data position, of no sequence identities; "
                             "leave --log_sequences out to resume it")  # fmt: skip
        del hparams["data_order"]
        train_loader = mixture_dataloader(h["train_sources"], block, batch_size, n_workers, h["seed"])
        train_loader.load_state_dict(saved_position)
    else:
        train_loader = GlobalBatchLoader(
            h["train_sources"], block, batch_size, h["global_batch_size"], fabric.global_rank, fabric.world_size,
            n_workers, h["seed"],
        )  # fmt: skip
        if saved_position is not None:
            train_loader.load_state_dict(saved_position)
    sequence_log = None
    if h["log_sequences"]:
        if fabric.global_rank == 0:
            trim_sequence_log(out_dir, state["step_count"])  # the steps after it are trained again
        fabric.barrier()
        sequence_log = SequenceLog(out_dir, fabric.global_rank)

    fit(fabric, model, optimizer, train_loader, val_loader, state, accumulation, out_dir, resume, saved_schedule,
        sequence_log)  # fmt: skip


def fit(
    fabric,
    model,
    optimizer,
    train_loader,
    val_loader,
    state,
    accumulation,
    out_dir,
    resume=None,
    saved_schedule=None,
    sequence_log=None,
) -> None:
    h = state["hparams"]
    block_size = model.config.block_size
    tokens_per_step = h["global_batch_size"] * block_size
    # the schedule spans --max_tokens, counted from the tokens left (a resumed run may take steps of another
    # --global_batch_size than the checkpoint's); --max_steps only stops earlier, so that a run stopped there and
    # resumed follows the same schedule as one that ran through
    schedule_steps = state["step_count"] + (h["max_tokens"] - state["tokens_seen"]) // tokens_per_step
    if h.get("anneal_from") is not None:  # a WSD decay from the step the anneal branched off, ending the run
        start, schedule_steps = h["anneal_from"], h["anneal_from"] + h["anneal_steps"]
        schedule = Schedule("wsd", h["learning_rate"], h["min_lr"], h["warmup_steps"], schedule_steps, start,
                            h["decay_shape"])  # fmt: skip
    else:
        schedule = make_schedule(h["lr_schedule"], h["learning_rate"], h["min_lr"], h["warmup_steps"], schedule_steps,
                                 h["decay_fraction"], h["decay_steps"], h["decay_shape"])  # fmt: skip
    h["lr_schedule_resolved"] = schedule.to_dict()  # in every checkpoint: what a resumed run compares its own with
    if resume and (note := schedule_change_note(resume, saved_schedule, schedule, state["step_count"])):
        fabric.print(note, file=sys.stderr)
    max_steps = schedule_steps if h["max_steps"] is None else min(schedule_steps, h["max_steps"])
    flops_per_tok = flops_per_token(model.config)
    saver = CheckpointSaver(fabric, out_dir, h["keep_last"], h["async_save"])
    # from here on, SIGINT/SIGTERM/SIGUSR1 stop the run at a step boundary
    stop = StopSignal(fabric.device, saved_before=lambda: find_latest(out_dir) is not None)
    fabric.print(
        f"{max_steps} steps of {tokens_per_step:,} tokens ({accumulation} micro-batch{'es' * (accumulation > 1)} of "
        f"{h['micro_batch_size']} per device; {schedule.kind} learning-rate schedule over {schedule_steps:,} steps); "
        f"{num_parameters(model.config):,} non-embedding parameters, {flops_per_tok / 1e9:.2f} GFLOPs/token "
        "(6N + 12·L·d·T)"
    )

    elastic = "data_order" in h  # else a checkpoint's litdata loader, whose epochs end in short batches
    train_iterator = iter(train_loader) if elastic else cycle_full_batches(train_loader, h["micro_batch_size"])
    guard = None
    if h["spike_factor"] is not None:
        # a guarded step is named by its sequences: (source, index) in the global order, or digests of their tokens
        named_by = train_loader.step_sequences if elastic else None
        guard = SpikeGuard(fabric, h["spike_factor"], h["spike_window"], h["spike_warmup"], named_by)
        if state["step_count"] and (note := guard.load_state_dict(state["spike_guard"])):
            fabric.print(note)
    data_watch = DataWatch([*(folder for folder, _ in h["train_sources"]), h["val_dir"]])  # replaced while read?
    nonfinite_streak = torch.zeros((), device=fabric.device)
    skipped = torch.zeros((), device=fabric.device)
    last_log_time, last_log_step = time.perf_counter(), state["step_count"]
    data_wait = 0.0  # host seconds spent waiting for batches since the last log step

    eos_id = h["eos_id"] if h["document_mask"] else None
    evaluate_tasks = task_evaluator(h, fabric.device)
    doc_kwargs = dict(eos_id=eos_id, document_positions=h["document_positions"])
    folders = [*(folder for folder, _ in h["train_sources"]), h["val_dir"]]
    id_check = BatchIdCheck(folders, model.config.padded_vocab_size, model.config.name)  # for data without a record

    def next_micro_batches() -> tuple:
        nonlocal data_wait
        t_data = time.perf_counter()
        micro_batches, ids = [], []
        for _ in range(accumulation):
            micro_batches.append(next(train_iterator))
            ids += train_loader.last_sequences() if sequence_log else []
        if sequence_log:  # the rows as read, with the identities of their sequences
            rows = [row for batch in micro_batches for row in batch]
            sequence_log.read(ids, rows)
        if id_check:  # data prepared before its largest id was recorded: each batch, on the host, agreed
            id_check(micro_batches, fabric)
        bounds = document_bounds(micro_batches, eos_id)  # on the host, before the copy
        digests = sequence_ids(micro_batches) if guard and not elastic else None  # logged with a guarded step
        micro_batches = [fabric.to_device(batch) for batch in micro_batches]
        data_wait += time.perf_counter() - t_data
        return micro_batches, bounds, digests

    prefetched = None
    # from here on, a step that does not complete in time ends every process with its stacks (a daemon thread: an
    # exception ends the run as before)
    watchdog = Watchdog(out_dir, fabric.global_rank, fabric.world_size, h["watchdog_timeout"], saver.in_flight).start()
    while state["step_count"] < max_steps:
        lr = schedule.lr(state["step_count"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches, bounds, digests = prefetched or next_micro_batches()
        hang_for_test(fabric.global_rank, state["step_count"] + 1)
        loss, grad_norm = training_step(
            fabric, model, optimizer, micro_batches, h["grad_clip"], h["reshard_after_backward"],
            max_documents=bounds, guard=guard, z_loss=h["z_loss"], **doc_kwargs,
        )  # fmt: skip
        state["iter_num"] += accumulation
        state["step_count"] += 1
        state["tokens_seen"] += tokens_per_step
        step = state["step_count"]
        watchdog.beat(step)
        if guard:
            guard.record(step, digests)
        if sequence_log:
            sequence_log.trained(step)
        stopping = stop.agreed() and step < max_steps  # the same answer on every process
        saving = step % h["save_interval"] == 0 or step == max_steps or stopping
        # read the next step's batches while the device still computes this one (the log step's sync below would
        # otherwise leave it idle for the read); not before a save, whose loader state must not count them
        prefetched = None if saving else next_micro_batches()
        nonfinite_streak = count_nonfinite(grad_norm, nonfinite_streak, skipped)

        logging = step % h["log_interval"] == 0 or step == max_steps
        if logging or saving:  # a folder replaced under the run stops it, before its position there is logged or saved
            data_watch.check(fabric)
        if logging:
            loss = mean_loss(fabric, loss)
            state["skipped_steps"] += int(skipped.item())
            skipped.zero_()
            now = time.perf_counter()
            step_time = (now - last_log_time) / (step - last_log_step)
            data_wait_per_step = data_wait / (step - last_log_step)
            last_log_time, last_log_step, data_wait = now, step, 0.0
            tokens_per_sec = tokens_per_step / step_time
            device_mfu = mfu(tokens_per_sec / fabric.world_size, flops_per_tok, fabric.device)
            metrics = step_metrics(fabric, state, loss, lr, grad_norm, tokens_per_sec, step_time, max_steps - step,
                                   device_mfu, data_wait_per_step)  # fmt: skip
            if guard:
                guard.report()
                metrics["guarded_steps"] = guard.skipped
            log_metrics(fabric, step, max_steps, metrics)
            if nonfinite_streak.item() >= h["max_nonfinite_steps"]:
                raise UserError(nonfinite_stop_message(out_dir, int(nonfinite_streak.item()), step))  # one line
            if guard and guard.streak >= h["max_spike_steps"]:
                raise UserError(spike_stop_message(guard.streak, step, h["spike_factor"], resume_command()))

        if step % h["eval_interval"] == 0 or step == max_steps:
            t0 = time.perf_counter()
            val_batches = id_check.batches(watchdog.beating(val_loader), fabric)
            val_loss = validate(fabric, model, val_batches, h["eval_iters"], **doc_kwargs).item()
            watchdog.beat()
            log_validation(fabric, step, val_loss, t0)

        if evaluate_tasks and (step % h["eval_tasks_interval"] == 0 or step == max_steps):
            t0 = time.perf_counter()
            scores = evaluate_tasks(fabric, model, step, state["tokens_seen"])
            shown = ", ".join(f"{name[len('eval/') :]} {value:.4f}" for name, value in scores.items())
            fabric.print(f"step {step}: {shown}, {time.perf_counter() - t0:.1f}s")

        if saving:
            state["train_dataloader"] = train_loader.state_dict()
            state["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
            state["spike_guard"] = guard.state_dict() if guard else None
            path = checkpoint_path(out_dir, step)
            # not pruned during a non-finite streak, whose earlier checkpoints are the ones to resume from
            with stop.saving(path):  # a second signal while it is staged (or written synchronously) says so
                saver.save(path, state, prune=not nonfinite_streak.item())
            watchdog.beat()
        if stopping:
            with stop.saving(path):
                saver.wait()  # the checkpoint just staged, written whole
            watchdog.stop()
            fabric.print(stop.stopped_message(step, max_steps, path))
            stop.restore()
            return

    saver.wait()
    watchdog.stop()
    stop.restore()
    fabric.print(f"Done: {state['step_count']} steps, {state['tokens_seen']:,} tokens")


def task_evaluator(h: Dict[str, Any], device: torch.device):
    """`lit_gpt.harness.TaskEvaluator` for --eval_tasks, None without it."""
    if not h["eval_tasks"]:
        return None
    from lit_gpt.data.separators import Separators
    from lit_gpt.harness import TaskEvaluator  # lm-eval: imported only by a run that evaluates tasks

    separators = Separators.from_dict(h["separators"], "the run's data")
    return TaskEvaluator(h["eval_tasks"], h["eval_tasks_tokenizer_dir"], separators, h["eval_tasks_limit"],
                         batch_size=h["micro_batch_size"])  # fmt: skip


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(setup)
