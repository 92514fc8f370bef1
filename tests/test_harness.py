"""lm-evaluation-harness on lit checkpoints (lit_gpt/harness.py, eval/harness.py): the same scores and the same
per-request answers as lm-eval's own `hf` backend on the Hugging Face export of the checkpoint, on the two hand-made
tasks of tests/tasks/ (multiple choice and generation); the convention's prefix; local task files."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-evaluation-harness is not installed: `pip install -e '.[eval]'` (scripts/install.sh installs it)",
)

TASKS = Path(__file__).resolve().parent / "tasks"
CHOICE, GEN = str(TASKS / "tiny_choice.yaml"), str(TASKS / "tiny_gen.yaml")


@pytest.fixture(scope="module")
def bos_checkpoints(export_lit_dir, tmp_path_factory):
    """The test checkpoint as trained with bos before and eos after each document (bos is what the export's
    tokenizer says, and eos alone ends generation in both backends), its Hugging Face export."""
    from lit_gpt.data.separators import Separators, write_separators
    from scripts.convert_lit_checkpoint import convert

    root = tmp_path_factory.mktemp("harness")
    lit = root / "lit"
    shutil.copytree(export_lit_dir, lit)
    write_separators(lit, Separators(bos=True, eos=True))
    hf = root / "hf"
    convert(lit, hf)
    return lit, hf


def lit_results(checkpoint_dir: Path, tasks: str, **kwargs):
    from lit_gpt.data.separators import read_separators
    from lit_gpt.generate import load_model
    from lit_gpt.harness import evaluate_tasks
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training.fabric import L

    model = load_model(L.Fabric(devices=1, accelerator="cpu", precision="32-true"), checkpoint_dir)
    tokenizer = Tokenizer(checkpoint_dir)
    return evaluate_tasks(model, tokenizer, read_separators(checkpoint_dir), tasks, log_samples=True, **kwargs)


def hf_results(hf_dir: Path, tasks: str):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lit_gpt.harness import task_specs

    return simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=task_specs(tasks),
        task_manager=TaskManager(),
        device="cpu",
        batch_size=4,
        log_samples=True,
        bootstrap_iters=0,
    )


def answers(results: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.slow  # two backends on two tasks: about two minutes on 2 loaded cores
def test_harness_scores_equal_lm_eval_hf_backend_on_the_export(bos_checkpoints):
    from lit_gpt.harness import flat_scores

    lit, hf = bos_checkpoints
    ours, ours_full = lit_results(lit, f"{CHOICE},{GEN}", batch_size=3)
    theirs = hf_results(hf, f"{CHOICE},{GEN}")
    assert (
        set(ours)
        == set(flat_scores(theirs))
        == {
            "tiny_choice/acc",
            "tiny_choice/acc_norm",
            "tiny_gen/exact_match",
        }
    )
    for name, value in flat_scores(theirs).items():
        assert ours[name] == pytest.approx(value, abs=1e-4), name
    # every answer too: the log-likelihood of each choice, and each generated text
    for (ours_ll, ours_greedy), (theirs_ll, theirs_greedy) in zip(
        sum(answers(ours_full, "tiny_choice"), []), sum(answers(theirs, "tiny_choice"), [])
    ):
        assert float(ours_ll) == pytest.approx(float(theirs_ll), abs=1e-4)
        assert ours_greedy == theirs_greedy
    # the generated texts: where both are valid text. A run of byte tokens that is not UTF-8 (this barely trained
    # model generates some) decodes differently: SentencePiece keeps its ASCII bytes, tokenizers' byte fallback
    # replaces the whole run; the tokens are the same
    pairs = [(o[0], t[0]) for o, t in zip(answers(ours_full, "tiny_gen"), answers(theirs, "tiny_gen"))]
    valid = [(o, t) for o, t in pairs if "\ufffd" not in o + t]
    assert len(valid) >= len(pairs) // 2 and any(o for o, _ in valid), pairs
    assert all(o == t for o, t in valid), valid


def test_harness_puts_the_convention_prefix_before_every_context(export_lit_dir, bos_checkpoints):
    from lit_gpt.data.separators import read_separators
    from lit_gpt.generate import load_model
    from lit_gpt.harness import LitLM
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training.fabric import L

    for checkpoint_dir in (export_lit_dir, bos_checkpoints[0]):
        tokenizer, separators = Tokenizer(checkpoint_dir), read_separators(checkpoint_dir)
        model = load_model(L.Fabric(devices=1, accelerator="cpu"), checkpoint_dir)
        lm = LitLM(model, tokenizer, separators)
        first = tokenizer.bos_id if separators.bos else tokenizer.eos_id
        assert lm.tok_encode("Question: what?") == [first] + tokenizer.encode_ids("Question: what?")
        assert lm.tok_encode(" yes", add_special_tokens=False) == tokenizer.encode_ids(" yes")
    assert not read_separators(export_lit_dir).bos  # the fixture's checkpoint was trained with eos alone


def test_eval_harness_script_prints_and_writes_the_scores(bos_checkpoints, tmp_path, capsys):
    from eval.harness import main

    out = tmp_path / "result.json"
    result = main(bos_checkpoints[0], tasks=CHOICE, limit=5, batch_size=2, precision="32-true", out_file=out)
    assert set(result["scores"]) == {"tiny_choice/acc", "tiny_choice/acc_norm"}
    written = json.loads(out.read_text())
    assert written["results"]["tiny_choice"]["acc,none"] == result["scores"]["tiny_choice/acc"]
    assert written["n-samples"]["tiny_choice"]["effective"] == 5
    assert f"tiny_choice/acc: {result['scores']['tiny_choice/acc']:.4f}" in capsys.readouterr().out


def test_task_file_that_does_not_exist_is_refused_in_one_line(tmp_path):
    from lit_gpt.cli import UserError
    from lit_gpt.harness import task_specs

    with pytest.raises(UserError, match="does not exist"):
        task_specs(f"{CHOICE},{tmp_path / 'missing.yaml'}")
    spec = task_specs(CHOICE)[0]
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(TASKS / "tiny_choice.jsonl")


# evaluation during pretraining (pretrain/tinyllama.py --eval_tasks)

TASK_FLAGS = ["--eval_tasks", f"{CHOICE},{GEN}", "--eval_tasks_interval", "2", "--eval_tasks_limit", "6"]


@pytest.mark.slow  # a 2-process run with two evaluations, and the standalone evaluation: about a minute
def test_two_process_run_evaluates_tasks_as_the_standalone_script_and_trains_as_without(
    tmp_path, pretrain_runs, export_tokenizer_dir
):
    """Each process evaluates its share and rank 0 logs the gathered scores, equal to eval/harness.py's on the saved
    checkpoint; the losses, weights, data position and random state are those of the same run without evaluations,
    bit for bit (pretrain_runs["two"]), so that a resume from its checkpoint is too."""
    import torch
    from test_pretrain import SHARDED_FLAGS, metrics, model_weights, run

    from eval.harness import main as evaluate
    from scripts.convert_pretrained_checkpoint import convert

    out, without = tmp_path / "run", pretrain_runs["two"]
    proc = run(out, pretrain_runs["data"], *SHARDED_FLAGS, *TASK_FLAGS, "--eval_tasks_tokenizer_dir",
               str(export_tokenizer_dir), devices=2)  # fmt: skip
    assert "step 2: tiny_choice/acc" in proc.stdout and "step 3: tiny_choice/acc" in proc.stdout, proc.stdout
    logged = {name: metrics(out, f"eval/{name}") for name in ("tiny_choice/acc", "tiny_choice/acc_norm")}
    logged["tiny_gen/exact_match"] = metrics(out, "eval/tiny_gen/exact_match")
    assert all(set(values) == {2, 3} for values in logged.values()), logged
    assert metrics(out, "tokens")[2] == 2 * 8 * 32

    lit = tmp_path / "lit"
    convert(out / "step-00000003.pth", export_tokenizer_dir, None, lit)
    standalone = evaluate(lit, tasks=f"{CHOICE},{GEN}", limit=6, batch_size=2, precision="32-true")["scores"]
    assert set(standalone) == set(logged)
    for name, values in logged.items():
        assert values[3] == pytest.approx(standalone[name], abs=1e-4), name

    for key in ("loss", "grad_norm", "val_loss"):
        assert metrics(out, key) == metrics(without, key), key
    for step in ("step-00000002.pth", "step-00000003.pth"):
        ours, theirs = model_weights(out / step), model_weights(without / step)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), step
    ours, theirs = (torch.load(d / "step-00000002.pth" / "meta.pt", weights_only=False) for d in (out, without))
    assert ours["train_dataloader"] == theirs["train_dataloader"]
    assert (
        torch.equal(ours["rng"]["torch"], theirs["rng"]["torch"]) and ours["rng"]["python"] == theirs["rng"]["python"]
    )


def test_eval_tasks_without_a_tokenizer_or_with_a_missing_task_file_is_refused_up_front(tmp_path, pretrain_runs):
    import subprocess
    import sys

    from test_pretrain import COMMON, SCRIPT, _env

    base = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(pretrain_runs["data"]), "--out_dir", str(tmp_path)]
    for flags, expected in [
        (["--eval_tasks", CHOICE], "--eval_tasks needs the tokenizer the data was prepared with"),
        (["--eval_tasks", "missing.yaml", "--eval_tasks_tokenizer_dir", str(tmp_path)], "missing.yaml does not exist"),
    ]:
        proc = subprocess.run(base + flags, capture_output=True, text=True, timeout=120, env=_env())
        assert proc.returncode != 0 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not list(tmp_path.glob("step-*"))


def test_rolling_loglikelihood_is_the_text_after_the_prefix_token(bos_checkpoints):
    """A whole text's log-likelihood (perplexity tasks): each token after the prefix token and the tokens before it;
    a text longer than the model's window is scored in windows that together cover it once."""
    import torch
    from lm_eval.api.instance import Instance

    from lit_gpt.data.separators import read_separators
    from lit_gpt.generate import load_model
    from lit_gpt.harness import LitLM
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training.fabric import L

    lit = bos_checkpoints[0]
    tokenizer = Tokenizer(lit)
    model = load_model(L.Fabric(devices=1, accelerator="cpu", precision="32-true"), lit)
    lm = LitLM(model, tokenizer, read_separators(lit), batch_size=2, max_length=64)
    short = "def forward(self, x):\n    return self.proj(x)\n"
    long = (Path(__file__).read_text()[:3000]).strip()
    ids = [tokenizer.bos_id] + tokenizer.encode_ids(short)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].float(), dim=-1)
    expected = float(logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    requests = [Instance("loglikelihood_rolling", {}, (text,), 0) for text in (short, long)]
    got_short, got_long = lm.loglikelihood_rolling(requests)
    assert got_short == pytest.approx(expected, abs=1e-4)
    assert len(tokenizer.encode_ids(long)) > 3 * 64 and got_long < got_short < 0


# each process its own generation requests, of kinds that another process may not have: every process must run as
# many forward passes as the others (a sharded model's passes are collective)
GENERATE_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, {root!r})
REQUESTS = {requests!r}


def run(rank, lit, out, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=2)
    from lm_eval.api.instance import Instance

    from lit_gpt.data.separators import read_separators
    from lit_gpt.harness import LitLM
    from lit_gpt.model import GPT
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.weights import lit_checkpoint_files, load_lit_state_dict

    config, weights = lit_checkpoint_files(lit)
    model = GPT(config).eval()
    model.load_state_dict(load_lit_state_dict(weights))
    lm = LitLM(model, Tokenizer(lit), read_separators(lit), batch_size=1)
    mine = [Instance("generate_until", {{}}, tuple(args), i) for i, args in enumerate(REQUESTS[rank])]
    with open(f"{{out}}-{{rank}}.json", "w") as f:
        json.dump(lm.generate_until(mine), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2], int(sys.argv[3])), nprocs=2)
"""


def test_generation_on_two_processes_with_different_requests_each_answers_as_one_process(bos_checkpoints, tmp_path):
    import socket
    import subprocess
    import sys

    from lm_eval.api.instance import Instance

    from lit_gpt.data.separators import read_separators
    from lit_gpt.generate import load_model
    from lit_gpt.harness import LitLM
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training.fabric import L

    lit = bos_checkpoints[0]
    a, b = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}, {"until": [")"], "max_gen_toks": 4}
    requests = [  # rank 0: three of kind a and one of kind b; rank 1: one of kind a, none of kind b
        [["import torch\nimport", a], ["from pathlib", a], ["def forward(self", a], ["return self.proj(", b]],
        [["class Config:", a]],
    ]
    script = tmp_path / "generate.py"
    script.write_text(GENERATE_SCRIPT.format(root=str(Path(__file__).resolve().parents[1]), requests=requests))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "answers"
    proc = subprocess.run([sys.executable, str(script), str(lit), str(out), str(port)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    model = load_model(L.Fabric(devices=1, accelerator="cpu", precision="32-true"), lit)
    lm = LitLM(model, Tokenizer(lit), read_separators(lit), batch_size=1)
    for rank, mine in enumerate(requests):
        expected = lm.generate_until([Instance("generate_until", {}, tuple(args), i) for i, args in enumerate(mine)])
        assert json.loads((tmp_path / f"answers-{rank}.json").read_text()) == expected
