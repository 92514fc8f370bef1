"""One optimizer step (gradient accumulation, clipping, non-finite skip) and validation, shared by the training
script and the benchmark so that both time exactly the same code.

Nothing here copies a value to the host (`.item()`, `if tensor:`): the GPU queue never drains inside a step.
"""

from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer

from lit_gpt.documents import count_documents
from lit_gpt.training.fabric import L


def training_step(
    fabric: L.Fabric,
    model: nn.Module,
    optimizer: Optimizer,
    micro_batches: Sequence[torch.Tensor],
    grad_clip: float,
    reshard_after_backward: bool = True,
    eos_id: Optional[int] = None,
    document_positions: bool = False,
    max_documents: Optional[Sequence[int]] = None,
    guard: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    z_loss: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Accumulate gradients over `micro_batches`, clip them, and take one optimizer step unless they are non-finite.

    Each micro-batch is a (micro_batch_size, block_size + 1) tensor of token ids on the device: inputs are the first
    `block_size` tokens, targets the last; or an (inputs, targets) pair of (micro_batch_size, T) tensors, targets -100
    where no loss is taken (finetuning's prompt and padding). Gradient synchronization happens only in the backward
    pass of the last micro-batch. Returns this process's mean loss over the micro-batches and the global gradient norm
    before clipping, both as device tensors; a non-finite norm (on any process) means the step was skipped: no weight,
    moment or step count changes. The learning rate is whatever the optimizer's param groups hold.

    `reshard_after_backward=False` keeps the weights FSDP2 gathered for one micro-batch's backward until the next
    micro-batch uses them, and frees them only after the last micro-batch's backward. Per module and step, the
    weights are then gathered once (modules that keep them from forward to backward) or n + 1 times (modules that
    reshard after forward) instead of n or 2n times for n micro-batches; the cost is the gathered weights staying
    allocated between micro-batches. Results are bit-identical either way.

    With `eos_id`, attention stays within documents (`GPT.forward`), `document_positions` restarts the rotary
    positions at each; `max_documents`, one bound per micro-batch counted on the host before the copy to the device
    (`document_bounds`), keeps the variable-length kernels from reading the count back.

    `guard(loss, grad_norm)`, given, decides on the device whether the step is skipped as well (1.0) or not (0.0):
    the spike guard (`lit_gpt.training.spikes`); a skipped step changes nothing, as a non-finite one.

    `z_loss` adds that multiple of the mean log²Z of the output softmax to each micro-batch's loss (`lit_gpt.loss`);
    the returned loss includes it (validation's does not).
    """
    n = len(micro_batches)
    loss_sum = torch.zeros((), device=fabric.device)
    try:
        for i, batch in enumerate(micro_batches):
            input_ids, targets = inputs_and_targets(batch)
            if not reshard_after_backward:
                set_reshard_after_backward(model, i == n - 1)
            with fabric.no_backward_sync(model, enabled=i < n - 1):
                # the keyword only when set: a model without it (a test's, or an older one) still trains
                z_kwargs = {"z_loss": z_loss} if z_loss else {}
                if eos_id is None:
                    loss = model(input_ids, targets=targets, **z_kwargs)
                else:
                    bound = max_documents[i] if max_documents else None
                    loss = model(input_ids, targets=targets, eos_id=eos_id, document_positions=document_positions,
                                 max_documents=bound, **z_kwargs)  # fmt: skip
                fabric.backward(loss / n)
            loss_sum += loss.detach()
    finally:  # a micro-batch that raised must not leave the modules holding on to their gathered weights
        if not reshard_after_backward:
            set_reshard_after_backward(model, True)
    grad_norm = clip_grad_norm(model, grad_clip)
    # the norm is global, so every process makes the same decision
    found_inf = (~torch.isfinite(grad_norm)).float()
    if guard is not None:
        found_inf = torch.maximum(found_inf, guard(loss_sum / n, grad_norm))
    optimizer_step(optimizer, found_inf)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / n, grad_norm


def count_nonfinite(grad_norm: torch.Tensor, streak: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
    """The streak of non-finite steps in a row after a step of `grad_norm` (0 after a finite one); `skipped`, the
    steps skipped since the last log step, counts it in place."""
    bad = (~torch.isfinite(grad_norm)).float()
    skipped += bad
    return (streak + bad) * bad


def set_reshard_after_backward(model: nn.Module, value: bool) -> None:
    """Set whether each FSDP2 module frees its gathered weights after its backward (no-op without FSDP2)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_reshard_after_backward(value, recurse=False)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most `max_norm` (0 disables); return the norm before."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor: the sharded gradients' norm, reduced over the processes
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm, foreach=True)
    return norm


def optimizer_step(optimizer: Optimizer, found_inf: torch.Tensor) -> None:
    """`optimizer.step()`, skipped on the device where `found_inf` (a float scalar) is 1.

    Fused Adam/AdamW (`fused=True`) read `found_inf` inside their kernel, as with AMP's grad scaler, so no host sync
    is needed. Other optimizers fall back to deciding on the host.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper forwards `step` to the wrapped optimizer
    if getattr(inner, "_step_supports_amp_scaling", False) and inner.defaults.get("fused"):
        inner.found_inf = found_inf
        optimizer.step()
        del inner.found_inf
    elif not found_inf.item():
        optimizer.step()


def inputs_and_targets(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """A pretraining block (B, T + 1) -> its first T and last T tokens; an (inputs, targets) pair stays as it is."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch[:, :-1], batch[:, 1:]


def document_bounds(micro_batches: Sequence[torch.Tensor], eos_id: Optional[int]) -> Optional[list]:
    """For a document mask: a bound on the documents of each (B, block_size + 1) micro-batch, counted on the host
    (`lit_gpt.documents.count_documents`), before the batches go to the device; None without a mask."""
    if eos_id is None:
        return None
    return [count_documents(batch[:, :-1], eos_id) for batch in micro_batches]


@torch.no_grad()
def validate(
    fabric: L.Fabric,
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    max_iters: int,
    eos_id: Optional[int] = None,
    document_positions: bool = False,
) -> torch.Tensor:
    """The mean loss over up to `max_iters` batches (as `training_step` takes them), averaged over all processes;
    with `eos_id`, under the same document mask as training."""
    model.eval()
    total = torch.zeros((), device=fabric.device)
    count = 0
    for i, batch in enumerate(batches):
        if i >= max_iters:
            break
        if eos_id is None:
            input_ids, targets = inputs_and_targets(fabric.to_device(batch))
            total += model(input_ids, targets=targets)
        else:
            (bound,) = document_bounds([batch], eos_id)
            batch = fabric.to_device(batch)
            total += model(batch[:, :-1], targets=batch[:, 1:], eos_id=eos_id, document_positions=document_positions,
                           max_documents=bound)  # fmt: skip
        count += 1
    model.train()
    reshard(model)
    if count == 0:
        raise RuntimeError("The validation set is empty: it has fewer samples than one micro-batch per process")
    return fabric.all_reduce(total / count, reduce_op="mean")


def reshard(model: nn.Module) -> None:
    """Return FSDP2 modules to their sharded state. Modules that keep their weights gathered after the forward pass
    (`reshard_after_forward=False`) stay gathered after a forward without backward, as in validation, and would then
    expose plain tensors instead of their sharded parameters to checkpointing."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
