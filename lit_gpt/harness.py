"""lm-evaluation-harness on lit models: a model class over `GPT`, and the evaluation of tasks by name or local YAML.

`LitLM` answers lm-evaluation-harness' three kinds of request with a lit `GPT` in memory: log-likelihoods of
continuations (multiple choice), rolling log-likelihoods of whole texts (perplexity tasks) and greedy generation
until stop strings, each in batches. Every text is encoded as the model saw documents in training
(`lit_gpt/data/separators.py`): a context starts with `prompt_prefix` (`bos` for a model trained with `bos`, the
previous document's `eos` for one trained with `eos` alone), and generation also stops at `stop_ids`. For a model
trained with `bos`, this is what lm-evaluation-harness' `hf` backend does on the Hugging Face export of the same
checkpoint (its tokenizer's `add_bos_token`), and the scores agree (tests/test_harness.py); for a model trained with
`eos` alone the export cannot say "put `eos` first", and the `hf` backend scores it without a prefix.

Under several processes (`torch.distributed` initialized, as in pretraining), each process evaluates its share of
each task's examples and rank 0 gathers them (lm-evaluation-harness' own sharding); every process runs the same
number of forward passes, as a sharded (FSDP) model needs. `evaluate_tasks` leaves the random number generators as
it found them, so that training goes on as if no evaluation had run.

lm-evaluation-harness is an optional dependency (`pip install -e '.[eval]'`): this module imports it, and is imported
only by those who evaluate (`eval/harness.py`, `pretrain/tinyllama.py --eval_tasks`).
"""

import contextlib
import copy
import functools
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM

from lit_gpt.cli import UserError
from lit_gpt.data.separators import Separators, prompt_prefix, stop_ids
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training.step import reshard

LOCAL_TASK_SUFFIXES = (".yaml", ".yml")


class LitLM(TemplateLM):
    """An lm-evaluation-harness model over a lit `GPT`, with the separator convention it was trained with."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        separators: Separators,
        batch_size: int = 16,
        max_gen_toks: int = 256,
        max_length: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.lit_tokenizer = tokenizer
        self.separators = separators
        self.batch_size = batch_size
        self._max_gen_toks = max_gen_toks
        self._max_length = max_length or model.config.block_size
        self.prefix = prompt_prefix(tokenizer, separators)
        self.stops = set(stop_ids(tokenizer, separators))
        self.vocab_size = tokenizer.vocab_size  # generation samples only the tokenizer's ids (the model's are padded)
        self._device = next(model.parameters()).device
        distributed = dist.is_available() and dist.is_initialized()
        self._rank = dist.get_rank() if distributed else 0
        self._world_size = dist.get_world_size() if distributed else 1

    # the harness' view of the model and the processes

    @property
    def eot_token_id(self) -> int:
        return self.lit_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.prefix[0]

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def tokenizer_name(self) -> str:
        return str(self.lit_tokenizer.checkpoint_dir)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return torch.stack(out)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list]:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)  # all_gather: gloo and NCCL alike, and rank 0 is the only reader
        return out if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        """The ids of `string` as the start of a document: `prompt_prefix` first, unless `add_special_tokens` is
        False (a continuation) or the text already starts with it."""
        ids = self.lit_tokenizer.encode_ids(string, parse_special=True)  # as lm-eval's hf backend
        if add_special_tokens is False or ids[:1] == self.prefix:
            return ids
        return self.prefix + ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.lit_tokenizer.decode([i for i in ids if i not in (self.lit_tokenizer.bos_id, self.eot_token_id)])

    # the three kinds of request

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) for each
        `(key, context_ids, continuation_ids)`; longest first in batches of `batch_size`, right-padded."""
        rows = []
        for _, context, continuation in requests:
            ids = (context + continuation)[-(self.max_length + 1) :][:-1]  # the input: left-truncated to the window
            rows.append((ids, continuation))
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), rows[i][0]))
        results: List[Optional[Tuple[float, bool]]] = [None] * len(rows)
        for batch in _batches(order, self.batch_size):
            length = len(rows[batch[0]][0])
            idx = torch.zeros(len(batch), length, dtype=torch.long)
            for j, i in enumerate(batch):
                idx[j, : len(rows[i][0])] = torch.tensor(rows[i][0])
            logits = self._forward(idx)
            for j, i in enumerate(batch):
                inp, continuation = rows[i]
                # the positions that predict the continuation, in float32: the softmax of those alone
                scored = F.log_softmax(logits[j, len(inp) - len(continuation) : len(inp)].float(), dim=-1)
                target = torch.tensor(continuation, device=scored.device)
                greedy = bool((scored.argmax(dim=-1) == target).all())
                results[i] = (float(scored.gather(-1, target[:, None]).sum()), greedy)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """The log-likelihood of each whole text, in windows of the model's length; its first token is conditioned
        on `prompt_prefix` alone (the document's start)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            ids = self.tok_encode(string, add_special_tokens=False)
            for window in get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, context_len=1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(n)
        padding = self._padding(len(windows))  # the same number of batches on every process
        scores = self._loglikelihood_tokens(windows + windows[:1] * padding)[: len(windows)]
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, scores):
            totals[n] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        """Greedy continuations, until a stop string, a stop id of the convention or `max_gen_toks` tokens; requests
        with the same generation arguments are batched, left-padded. Under several processes, every process runs as
        many batches of each kind of request as the process with the most (a stand-in batch where it has fewer)."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        results: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(n)
        plan = {
            key: (requests[members[0]].args[1], -(-len(members) // self.batch_size)) for key, members in groups.items()
        }
        if self.world_size > 1:  # the kinds of request of every process, and the most batches of each
            every = [None] * self.world_size
            dist.all_gather_object(every, plan)
            plan = {}
            for other in every:
                for key, (gen_kwargs, count) in other.items():
                    plan[key] = (gen_kwargs, max(count, plan.get(key, (None, 0))[1]))
        for key in sorted(plan):
            gen_kwargs, count = plan[key]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
                raise UserError(f"generation with sampling ({kwargs}) is not supported: greedy decoding only")
            until = handle_stop_sequences(kwargs.get("until"), eos=None)
            max_new = kwargs["max_gen_toks"]
            members = groups.get(key, [])
            contexts = {n: self.tok_encode(requests[n].args[0])[-(self.max_length - max_new) :] for n in members}
            order = sorted(members, key=lambda n: (-len(contexts[n]), n))
            batches = list(_batches(order, self.batch_size))
            for batch in batches + [[]] * (count - len(batches)):
                if not batch:  # a stand-in, for the forward passes of the processes that have one more batch
                    self._generate([self.prefix], until, max_new)
                    continue
                generated = self._generate([contexts[n] for n in batch], until, max_new)
                for n, ids in zip(batch, generated):
                    results[n] = postprocess_generated_text(self.tok_decode(ids), until, None)
        return results

    # the model

    def _forward(self, idx: torch.Tensor, input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.no_grad():
            return self.model(idx.to(self.device), input_pos)

    def _generate(self, contexts: List[List[int]], until: List[str], max_new: int) -> List[List[int]]:
        """The greedy continuations of left-padded `contexts` with the KV cache. A row stops at a stop id or once
        its text holds a stop string; the batch goes on while one row (on any process) has not stopped."""
        B, T = len(contexts), max(len(c) for c in contexts)
        idx = torch.zeros(B, T, dtype=torch.long)
        keep = torch.ones(B, T + max_new, dtype=torch.bool)  # the positions a row attends to: not its padding
        for j, c in enumerate(contexts):
            idx[j, T - len(c) :] = torch.tensor(c)
            keep[j, : T - len(c)] = False
        self.model.set_kv_cache(batch_size=B, max_seq_length=T + max_new, device=self.device)
        causal = self.model.mask_cache.to(self.device)  # (1, 1, L, L)
        # a padding position still sees itself: a row of no visible key would give NaN
        diagonal = torch.eye(T + max_new, dtype=torch.bool, device=self.device)
        self.model.mask_cache = causal & (keep.to(self.device)[:, None, None, :] | diagonal)
        out: List[List[int]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool)
        try:
            logits = self._forward(idx, torch.arange(T, device=self.device))[:, -1]
            for step in range(max_new):
                next_ids = logits[:, : self.vocab_size].argmax(dim=-1).cpu()
                for j in range(B):
                    if done[j]:
                        continue
                    if int(next_ids[j]) in self.stops:
                        done[j] = True
                        continue
                    out[j].append(int(next_ids[j]))
                    if until and any(s and s in self.tok_decode(out[j]) for s in until):
                        done[j] = True
                if self._all_done(bool(done.all())) or step == max_new - 1:
                    break
                pos = torch.tensor([T + step], device=self.device)
                logits = self._forward(next_ids.view(B, 1), pos)[:, -1]
        finally:
            self.model.clear_kv_cache()
        return out

    def _all_done(self, mine: bool) -> bool:
        if self.world_size == 1:
            return mine
        flag = torch.tensor(float(not mine), device=self.device)
        dist.all_reduce(flag)
        return flag.item() == 0

    def _padding(self, count: int) -> int:
        """How many requests this process adds so that every process has as many as the one with the most."""
        if self.world_size == 1:
            return 0
        counts = self.all_gather(torch.tensor(count, device=self.device)).tolist()
        return max(counts) - count


def _batches(items: Sequence[int], size: int) -> Iterator[List[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# tasks


def task_specs(tasks: Union[str, Sequence[str]]) -> List[Union[str, dict]]:
    """lm-evaluation-harness' task arguments for `tasks` (comma-separated, or a list): a name stays a name (a task
    of lm-evaluation-harness, read from the Hugging Face datasets cache when it holds it), a path to a YAML file
    becomes its task config, with the `data_files` it names read relative to the YAML's folder."""
    from lm_eval.tasks._yaml_loader import load_yaml  # includes and !function tags, as lm-eval reads a task (0.4.13)

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("no task given: pass task names or YAML files, e.g. `--tasks hellaswag,arc_easy`")
    specs: List[Union[str, dict]] = []
    for name in names:
        if not name.endswith(LOCAL_TASK_SUFFIXES):
            specs.append(name)
            continue
        path = Path(name)
        if not path.is_file():
            raise UserError(f"the task file {name} does not exist; pass a task's YAML file or an lm-eval task name")
        config = load_yaml(path)
        kwargs = config.get("dataset_kwargs") or {}
        files = kwargs.get("data_files")
        if files is not None:
            config["dataset_kwargs"] = dict(kwargs, data_files=_resolve(files, path.parent))
        specs.append(config)
    return specs


def _resolve(files: Any, folder: Path) -> Any:
    if isinstance(files, str):
        return str((folder / files).resolve()) if not Path(files).is_absolute() else files
    if isinstance(files, dict):
        return {k: _resolve(v, folder) for k, v in files.items()}
    return [_resolve(f, folder) for f in files]


@functools.lru_cache(maxsize=2)
def task_manager(local_only: bool):
    """lm-evaluation-harness' index of tasks, made once per process (its own thousands of task files take seconds to
    index); not indexed at all when every task is a local YAML file."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=not local_only)


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Put back every random number generator that training draws from (Python's, NumPy's, torch's on the CPU and
    on the GPUs) as they were: the evaluation's draws (lm-evaluation-harness seeds them) leave no trace."""
    import numpy as np

    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def evaluate_tasks(
    model: GPT,
    tokenizer: Tokenizer,
    separators: Separators,
    tasks: Union[str, Sequence[str]],
    limit: Optional[Union[int, float]] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 16,
    max_gen_toks: int = 256,
    log_samples: bool = False,
) -> Tuple[Dict[str, float], Optional[dict]]:
    """Evaluate `model` on `tasks` (`task_specs`), the first `limit` examples of each (a fraction below 1).

    Returns `(scores, results)`: `scores` maps `task/metric` (the filter named where a task has several, e.g.
    `gsm8k/exact_match,strict-match`) to its value, the same on every process; `results` is lm-evaluation-harness'
    whole result on rank 0 (with each request's answers with `log_samples`), None elsewhere. The model is put in eval
    mode and back, and the random generators are left untouched (`rng_untouched`)."""
    from lm_eval import simple_evaluate

    lm = LitLM(model, tokenizer, separators, batch_size=batch_size, max_gen_toks=max_gen_toks)
    specs = task_specs(tasks)
    was_training = model.training
    model.eval()
    try:
        with rng_untouched():
            results = simple_evaluate(
                model=lm,
                tasks=copy.deepcopy(specs),
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=task_manager(all(isinstance(spec, dict) for spec in specs)),
                log_samples=log_samples,
                bootstrap_iters=0,
                verbosity="WARNING",
            )
    finally:
        model.train(was_training)
    scores = flat_scores(results) if results is not None else {}
    if lm.world_size > 1:
        shared = [scores]
        dist.broadcast_object_list(shared, src=0)
        scores = shared[0]
    return scores, results


def flat_scores(results: dict) -> Dict[str, float]:
    """`task/metric` -> value of an lm-evaluation-harness result (its stderr entries left out); the filter's name
    is kept after the metric where it is not `none`."""
    scores = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, kind = key.partition(",")  # `metric,filter`; `alias`, `sample_len` have no filter
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            scores[f"{task}/{metric if kind in ('', 'none') else key}"] = float(value)
    return scores


# evaluation during training (pretrain/tinyllama.py --eval_tasks)


class TaskEvaluator:
    """The tasks that a training run evaluates its model on every few steps, and how their scores are logged: as
    `eval/<task>/<metric>` beside `tokens`, at the step's number, to the run's logger (CSV, TensorBoard, W&B), which
    `scripts/plot_logs.py` draws against tokens."""

    def __init__(
        self,
        tasks: str,
        tokenizer_dir: Path,
        separators: Separators,
        limit: Optional[Union[int, float]] = None,
        batch_size: int = 16,
    ) -> None:
        self.tasks = tasks
        self.tokenizer = Tokenizer(tokenizer_dir)
        self.separators = separators
        self.limit = limit
        self.batch_size = batch_size

    def __call__(self, fabric, model: GPT, step: int, tokens: int) -> Dict[str, float]:
        scores, _ = evaluate_tasks(model, self.tokenizer, self.separators, self.tasks, self.limit,
                                   batch_size=self.batch_size)  # fmt: skip
        reshard(model)  # FSDP2 modules that keep their weights gathered after a forward: sharded again, as validate
        metrics = {f"eval/{name}": value for name, value in scores.items()}
        fabric.log_dict({**metrics, "tokens": tokens}, step=step)
        return metrics


def check_eval_tasks(tasks: str, tokenizer_dir: Optional[Path], vocab_size: int) -> None:
    """Refuse, before any work, what would stop the run at its first evaluation: no tokenizer, a task file that
    does not exist, a tokenizer with more ids than the model."""
    if tokenizer_dir is None:
        raise UserError(
            "--eval_tasks needs the tokenizer the data was prepared with: pass --eval_tasks_tokenizer_dir <dir>"
        )
    task_specs(tasks)
    tokens = Tokenizer(tokenizer_dir).vocab_size
    if tokens > vocab_size:
        raise UserError(
            f"--eval_tasks_tokenizer_dir {tokenizer_dir} has {tokens:,} token ids, more than the model's "
            f"{vocab_size:,}: pass the tokenizer the data was prepared with"
        )
