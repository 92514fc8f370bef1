"""The spike guard: an optimizer step whose loss or gradient norm is far above those of the recent steps is not applied.

`SpikeGuard(factor, window, warmup)` keeps, on the device, the global loss and the gradient norm (before clipping) of
the last `window` steps that were applied. Once `warmup` steps are recorded, a step whose loss or norm exceeds
`factor` times the median of those is skipped the way a non-finite step is (`lit_gpt.training.step.optimizer_step`:
no weight, AdamW moment or AdamW step count changes; the gradients are zeroed). It still counts as a step of the run:
its data is consumed, the learning-rate schedule, the step and token counts move on, as for a non-finite step, so a
run with guarded steps and one without stay on the same schedule. A skipped step does not enter the statistic.

The decision is made on the device from global values (the loss averaged over the processes, the global norm): every
process takes the same one and the host never waits inside a step. The training loop reads the decisions at its log
steps, names each guarded step with the identity of its sequences, and stops after `max_in_a_row` guarded steps in a
row. The statistic is saved in the checkpoint (`state_dict`), so that a resumed run guards exactly as one that did not
stop.
"""

import hashlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from lit_gpt.training.fabric import L


class SpikeGuard:
    def __init__(
        self,
        fabric: L.Fabric,
        factor: float,
        window: int,
        warmup: int,
        named_by: Optional[Callable[[int], List[Tuple[str, int]]]] = None,
    ) -> None:
        """`named_by(step)`, given, names the sequences of a step across all processes (the elastic loader's
        `step_sequences`: source folder and index in the global order); else each process's `sequence_ids`, gathered."""
        self.fabric, self.factor, self.window, self.warmup = fabric, factor, window, warmup
        self.named_by = named_by
        device = fabric.device
        self.losses = torch.full((window,), float("nan"), device=device)  # NaN: not yet recorded
        self.norms = torch.full((window,), float("nan"), device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)  # applied steps recorded, ever
        # the last step's (loss, grad norm, median loss, median norm, skipped), on the device
        self.last = torch.zeros(5, device=device)
        self.pending: List[Tuple[int, torch.Tensor, List[str]]] = []  # (step, its `last`, its sequences) to report
        self.streak = 0  # guarded steps in a row, up to the last report
        self.skipped = 0  # guarded steps of the run, up to the last report

    def __call__(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 (skip) or 0.0 for the step of this process's mean `loss` and the global `grad_norm`, on the device."""
        loss = self.fabric.all_reduce(loss.detach(), reduce_op="mean")
        grad_norm = grad_norm.detach().float()
        median_loss, median_norm = torch.nanmedian(self.losses), torch.nanmedian(self.norms)
        spike = (self.count >= self.warmup) & (
            (loss > self.factor * median_loss) | (grad_norm > self.factor * median_norm)
        )
        applied = ~spike & torch.isfinite(loss) & torch.isfinite(grad_norm)
        index = (self.count % self.window).unsqueeze(0)
        self.losses.index_copy_(0, index, torch.where(applied, loss, self.losses[index]))
        self.norms.index_copy_(0, index, torch.where(applied, grad_norm, self.norms[index]))
        self.count += applied.long()
        skip = spike.float()
        self.last = torch.stack([loss, grad_norm, median_loss, median_norm, skip])
        return skip

    def record(self, step: int, sequences: Optional[List[str]]) -> None:
        """Keep the decision of `step` (just taken, on the device) and this process's `sequence_ids` of it (None with
        `named_by`)."""
        self.pending.append((step, self.last, sequences))

    def report(self) -> None:
        """Print a line for each guarded step since the last report (reading the decisions on the host once), with the
        sequences of every process, and count the streak. Call it on every process at the same steps."""
        if not self.pending:
            return
        values = torch.stack([last for _, last, _ in self.pending]).tolist()
        for (step, _, sequences), row in zip(self.pending, values):
            if not row[4]:
                self.streak = 0
                continue
            self.streak += 1
            self.skipped += 1
            self.fabric.print(self.describe(step, row, self._names(step, sequences)))
        self.pending = []

    def _names(self, step: int, sequences: Optional[List[str]]) -> str:
        if self.named_by is not None:
            try:
                named = self.named_by(step)
            except KeyError as e:  # not among the steps the loader remembers
                return f"not named ({e.args[0]})"
            by_source: Dict[str, List[int]] = {}
            for folder, index in named:
                by_source.setdefault(folder, []).append(index)
            return "; ".join(f"{folder} {' '.join(map(str, indices))}" for folder, indices in by_source.items())
        everyone = [sequences]
        if self.fabric.world_size > 1:
            everyone = [None] * self.fabric.world_size
            dist.all_gather_object(everyone, sequences)
        ids = "; ".join(f"rank {rank}: {' '.join(ids)}" for rank, ids in enumerate(everyone))
        return f"(sha1 of the tokens) {ids}"

    def state_dict(self) -> Dict[str, Any]:
        self.report()  # every decision so far is counted in `skipped` and `streak`
        return {"losses": self.losses.cpu(), "norms": self.norms.cpu(), "count": self.count.cpu(),
                "skipped": self.skipped, "streak": self.streak}  # fmt: skip

    def load_state_dict(self, state: Optional[Dict[str, torch.Tensor]]) -> Optional[str]:
        """Take the statistic of a checkpoint; a note (and a fresh start of the statistic) where it has none, or one of
        another `--spike_window`."""
        if not state:
            return (
                "Note: the checkpoint holds no spike-guard statistic (saved without --spike_factor): it starts afresh"
            )
        if state["losses"].shape != self.losses.shape:
            return (f"Note: the checkpoint's spike-guard statistic covers {state['losses'].numel()} steps, this run's "
                    f"--spike_window {self.window}: it starts afresh")  # fmt: skip
        self.losses.copy_(state["losses"])
        self.norms.copy_(state["norms"])
        self.count.copy_(state["count"])
        self.skipped, self.streak = state["skipped"], state["streak"]
        return None

    def describe(self, step: int, values: Sequence[float], names: str) -> str:
        """The log line of a guarded `step`: its `values` (a `last` read on the host) and the names of its
        sequences."""
        loss, norm, median_loss, median_norm, _ = values
        limit_loss, limit_norm = self.factor * median_loss, self.factor * median_norm
        return (
            f"Spike guard: step {step} not applied (loss {loss:.4f}, grad norm {norm:.4f}; the limits, {self.factor:g} "
            f"× the median of the applied steps before: loss {limit_loss:.4f}, grad norm {limit_norm:.4f}). Its "
            f"sequences: {names}"
        )


def sequence_ids(micro_batches: Sequence[torch.Tensor]) -> List[str]:
    """An identity of each sequence of a step's micro-batches (on the host): the first 12 hex digits of the SHA-1 of
    its tokens as stored (`int32` litdata tokens hash alike wherever they are read)."""
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:12] for batch in micro_batches for row in batch]


def spike_stop_message(streak: int, step: int, factor: float, resume: str) -> str:
    """Why a run stopped after `streak` guarded steps in a row up to `step`, and how to resume it."""
    return (
        f"{streak} optimizer steps in a row (steps {step - streak + 1} to {step}) had a loss or gradient norm above "
        f"--spike_factor {factor:g} × the median of the steps before, and were not applied: the run has left the "
        f"regime the guard compares with (or a stretch of the data is bad: their sequences are logged above). Stopped "
        f"at step {step}. To go on past them, with a larger --spike_factor or --max_spike_steps, resume with: {resume}"
    )
