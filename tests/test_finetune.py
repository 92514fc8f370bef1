"""LoRA (lit_gpt/lora.py) and the finetuning scripts on CPU: a tiny model taught a synthetic instruction set, merged,
exported and answered through generate/base.py and transformers; resumption after SIGKILL; the adapter checkpoint."""

import contextlib
import copy
import importlib.util
import io
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch
from conftest import TEST_LLAMA

from lit_gpt.cli import UserError
from lit_gpt.config import Config
from lit_gpt.data.separators import DEFAULT_SEPARATORS, write_separators
from lit_gpt.hf import split_qkv
from lit_gpt.lora import LoRAConfig, LoRALinear, apply_lora, lora_state_dict, merge_lora
from lit_gpt.model import GPT, init_weights


def tiny_model(seed: int = 0) -> GPT:
    config = Config(**TEST_LLAMA)
    torch.manual_seed(seed)
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    return model


def randomize_adapters(model: GPT) -> None:
    """B starts at zero (the adapter is then a no-op): give every adapter a nonzero update."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_B.data = torch.randn(module.lora_B.shape, generator=generator) * 0.1


@pytest.mark.parametrize("targets", [("query",), ("key",), ("value",), ("query", "value"), ("query", "key", "value")])
def test_qkv_adapters_update_only_their_projections_rows(targets):
    model = tiny_model()
    lora = LoRAConfig(r=4, **{t: t in targets for t in ("query", "key", "value")})
    apply_lora(model, lora)
    randomize_adapters(model)
    layer = model.transformer.h[0].attn.attn
    changed = layer.delta_weight().abs().sum(dim=1) != 0  # (rows,)
    # the rows of each projection as lit_gpt.hf splits the fused weight for export: an independent account of the
    # layout [q x q_per_kv, k, v] x n_query_groups
    rows = torch.arange(layer.out_features).view(-1, 1)
    q, k, v = (r.flatten() for r in split_qkv(rows, model.config))
    expected = torch.zeros(layer.out_features, dtype=torch.bool)
    for name, index in (("query", q), ("key", k), ("value", v)):
        if name in targets:
            expected[index] = True
    assert torch.equal(changed, expected)
    # each projection has its own rank-r adapter
    assert layer.lora_A.shape == (4 * len(targets), model.config.n_embd)


def test_lora_model_computes_as_its_merged_weights_in_training_and_inference():
    """Every target on (the MLP's output projection included, which the plain model computes through a fused SwiGLU
    when it is an nn.Linear): the adapted model's loss and logits equal those of its merged, ordinary weights."""
    model = tiny_model()
    lora = LoRAConfig(r=4, dropout=0.0, query=True, key=True, value=True, projection=True, mlp=True, head=True)
    n_trainable = apply_lora(model, lora)
    randomize_adapters(model)
    assert model.fused_loss is False  # the fused loss (CUDA's default) reads lm_head.weight, not the head's adapter
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    merged = merge_lora(copy.deepcopy(model))
    assert set(merged.state_dict()) == set(tiny_model().state_dict())  # an ordinary GPT
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(x[:, :-1], targets=x[:, 1:])  # grad mode: the path of training
    loss.backward()
    torch.testing.assert_close(loss, merged(x[:, :-1], targets=x[:, 1:]), rtol=1e-5, atol=1e-5)
    base_loss = tiny_model()(x[:, :-1], targets=x[:, 1:])
    assert abs(loss.item() - base_loss.item()) > 1e-3  # the adapters do change the output
    with torch.no_grad():
        torch.testing.assert_close(model(x), merged(x), rtol=1e-4, atol=1e-5)
    # only the adapter gets gradients
    assert all((p.grad is not None) == ("lora_" in n) for n, p in model.named_parameters())


def test_lora_state_dict_holds_only_the_adapter():
    model = tiny_model()
    apply_lora(model, LoRAConfig(r=2, mlp=True))
    adapter = lora_state_dict(model)
    assert adapter and all(k.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for k in adapter)
    # the base weights keep their names, so that a base lit_model.pth loads into the adapted model
    base = tiny_model(seed=3).state_dict()
    missing, unexpected = model.load_state_dict(base, strict=False)
    assert not unexpected and sorted(missing) == sorted(adapter)


########################
# The scripts: a synthetic instruction set learned, merged, exported; resumption; the adapter checkpoint
########################
ROOT = Path(__file__).resolve().parents[1]
N_RECORDS, VAL_FRACTION = 72, 0.1  # 65 records to learn, 7 held out
# LoRA on every layer of a model from scratch answers all 65 codes after 160 steps of 16 (measured: 62 of 65 after
# 120; with --learning_rate 1e-2 or more it stalls); full finetuning (--learning_rate 3e-3) answers all after 90
COMMON = [
    "--accelerator", "cpu", "--precision", "32-true", "--template", "plain", "--val_fraction", str(VAL_FRACTION),
    "--global_batch_size", "16", "--micro_batch_size", "16", "--warmup_steps", "5", "--log_interval", "10",
    "--logger_name", "csv",
]  # fmt: skip
LORA_STEPS = 160
LORA = [
    *COMMON, "--max_steps", str(LORA_STEPS), "--save_interval", "20", "--eval_interval", "80",
    "--learning_rate", "2e-3", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--lora_key", "true",
    "--lora_projection", "true", "--lora_mlp", "true", "--lora_head", "true",
]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run(script: str, *args: str, devices: Optional[int] = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / script), *args] + (["--devices", str(devices)] if devices else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def run_until(script: str, line: str, sig: int, *args: str) -> Tuple[int, str]:
    """Run `script` and send `sig` to it once it prints a line that starts with `line`; the exit code and output."""
    cmd = [sys.executable, str(ROOT / script), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for text in proc.stdout:
            lines.append(text)
            if text.startswith(line):
                os.killpg(proc.pid, sig)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode, "".join(lines)


def write_base(out: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A lit checkpoint directory of test-llama initialized from scratch, with the test tokenizer."""
    from lit_gpt.weights import copy_tokenizer_files, save_lit_checkpoint

    out.mkdir(parents=True)
    model = tiny_model(seed)
    save_lit_checkpoint(model.state_dict(), model.config, out)
    copy_tokenizer_files(tokenizer_dir, out)
    return out


@pytest.fixture(scope="module")
def codes(tmp_path_factory, export_tokenizer_dir) -> dict:
    """The base checkpoint and the instruction file: "What is the code of <4 letters>?" -> 4 random digits."""
    tmp = tmp_path_factory.mktemp("codes")
    rng = random.Random(0)
    records = [
        {
            "instruction": f"What is the code of {''.join(rng.choices(string.ascii_lowercase, k=4))}?",
            "output": "".join(rng.choices(string.digits, k=4)),
        }
        for _ in range(N_RECORDS)
    ]
    (tmp / "codes.json").write_text(json.dumps(records, indent=1))
    return {"base": write_base(tmp / "base", export_tokenizer_dir, seed=0), "data": tmp / "codes.json",
            "records": records, "tmp": tmp}  # fmt: skip


def trained_records(data: Path) -> list:
    """The records of `data` that the scripts train on (not held out), read as they read them."""
    from lit_gpt.data.instruct import load_instructions, split_instructions

    return split_instructions(load_instructions(data), val_fraction=VAL_FRACTION, seed=1337)[0]  # default --seed


def prompt_ids(lit_dir: Path, records: list) -> List[List[int]]:
    """The ids of each record's instruction as finetuning put them before its response (and generate/base.py
    --template puts them before the answer)."""
    from lit_gpt.data.instruct import encode_prompt
    from lit_gpt.data.separators import read_separators
    from lit_gpt.tokenizer import Tokenizer

    tokenizer, separators = Tokenizer(lit_dir), read_separators(lit_dir)
    return [encode_prompt(tokenizer, r["instruction"], "plain", "", separators) for r in records]


def greedy_answers(lit_dir: Path, records: list) -> List[str]:
    """The greedy answers of the lit checkpoint to every record, by lit_gpt.generate (what generate/base.py runs)."""
    from lit_gpt.generate import generate, load_model
    from lit_gpt.tokenizer import Tokenizer
    from lit_gpt.training.fabric import L

    model = load_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), lit_dir)
    tokenizer = Tokenizer(lit_dir)
    answers = []
    for ids in prompt_ids(lit_dir, records):
        prompt = torch.tensor(ids, dtype=torch.int32)
        y = generate(model, prompt, 8, temperature=0.0, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)
        answers.append(tokenizer.decode(y[len(ids) :]).strip())
    return answers


def answers_of_generate_script(lit_dir: Path, records: list, capsys) -> List[str]:
    """generate/base.py's greedy answer to each record's instruction in the plain template (its stdout)."""
    main = load_script_at("generate/base.py").main
    answers = []
    capsys.readouterr()
    for record in records:
        main(checkpoint_dir=lit_dir, prompt=record["instruction"], template="plain", temperature=0.0,
             max_new_tokens=8, precision="32-true")  # fmt: skip
        answers.append(capsys.readouterr().out.strip())
    return answers


def answers_of_transformers(hf_dir: Path, lit_dir: Path, records: list) -> List[str]:
    """transformers' greedy answers from the HF export, prompted with the same ids; prompts of one length are
    generated as one batch (no padding, so the same numbers as one at a time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_gpt.tokenizer import Tokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tokenizer, eos = AutoTokenizer.from_pretrained(hf_dir), Tokenizer(lit_dir).eos_id
    all_ids = prompt_ids(lit_dir, records)
    answers = [None] * len(records)
    for length in sorted({len(ids) for ids in all_ids}):
        rows = [i for i, ids in enumerate(all_ids) if len(ids) == length]
        batch = torch.tensor([all_ids[i] for i in rows])
        out = model.generate(batch, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        for i, generated in zip(rows, out[:, length:]):
            answers[i] = hf_tokenizer.decode(generated, skip_special_tokens=True).strip()
    return answers


def load_script_at(relative: str):
    spec = importlib.util.spec_from_file_location(f"finetune_test_{Path(relative).stem}", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracy(answers: List[str], records: list) -> float:
    return sum(a == r["output"] for a, r in zip(answers, records)) / len(records)


@pytest.fixture(scope="module")
def lora_run(codes) -> Path:
    """The out dir of an uninterrupted LoRA run with the LORA flags, run in this process (a Python start with
    lightning costs ~6 s of CPU), its output in stdout.txt."""
    from lit_gpt.cli import cli

    out = codes["tmp"] / "lora"
    args = ["--checkpoint_dir", str(codes["base"]), "--data", str(codes["data"]), "--out_dir", str(out), *LORA]
    threads, printed = torch.get_num_threads(), io.StringIO()
    torch.set_num_threads(1)  # as the subprocesses' OMP_NUM_THREADS=1: the same numbers, and faster here
    try:
        with contextlib.redirect_stdout(printed):
            cli(load_script_at("finetune/lora.py").setup, args)
    finally:
        torch.set_num_threads(threads)
    (out / "stdout.txt").write_text(printed.getvalue())
    return out


def test_lora_learns_the_codes_and_its_merge_answers_alike_in_generate_and_transformers(
    codes, lora_run, tmp_path, capsys
):
    stdout = (lora_run / "stdout.txt").read_text()
    final = lora_run / f"step-{LORA_STEPS:08d}.pth"
    # the checkpoint holds the adapter and nothing of the base model; its size is printed
    checkpoint = torch.load(final, weights_only=True)
    adapter = checkpoint["model"]
    assert adapter and all(k.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for k in adapter)
    base_weights = torch.load(codes["base"] / "lit_model.pth", weights_only=True)
    assert not set(adapter) & set(base_weights)
    adapter_bytes = sum(t.nbytes for t in adapter.values())
    assert adapter_bytes < 0.25 * sum(t.nbytes for t in base_weights.values())
    size = re.search(rf"Saved \S+{final.name} \(([\d.]+) MB: adapter ([\d.]+) MB", stdout)
    assert size and float(size[2]) == pytest.approx(adapter_bytes / 1e6, abs=0.01), stdout[-2000:]
    assert float(size[1]) == pytest.approx(final.stat().st_size / 1e6, abs=0.01)

    merged = tmp_path / "merged"
    load_script_at("scripts/merge_lora.py").merge(codes["base"], lora_run, merged)
    assert {"lit_config.json", "lit_model.pth", "tokenizer.model"} <= {p.name for p in merged.iterdir()}
    check_answers(merged, trained_records(codes["data"]), tmp_path / "hf", capsys)


def check_answers(lit_dir: Path, records: list, hf_dir: Path, capsys) -> None:
    """At least 90% of `records` answered exactly by the lit checkpoint, and the same answers through
    generate/base.py (a few of them: each call loads the model) and through transformers after HF export."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # token-by-token decoding of a tiny model: 5x faster than 2 threads on a busy machine
    try:
        answers = greedy_answers(lit_dir, records)
        assert accuracy(answers, records) >= 0.9, list(zip(answers, [r["output"] for r in records]))
        assert answers_of_generate_script(lit_dir, records[:8], capsys) == answers[:8]
        load_script_at("scripts/convert_lit_checkpoint.py").convert(lit_dir, hf_dir)
        assert answers_of_transformers(hf_dir, lit_dir, records) == answers
    finally:
        torch.set_num_threads(threads)


def test_lora_resumed_after_sigkill_ends_bit_identical_and_refuses_another_base(codes, lora_run, tmp_path):
    killed = tmp_path / "killed"
    args = ["--checkpoint_dir", str(codes["base"]), "--data", str(codes["data"]), "--out_dir", str(killed), *LORA]
    code, out = run_until("finetune/lora.py", "step 30/", signal.SIGKILL, *args)  # after the step-20 checkpoint
    assert code == -signal.SIGKILL, out[-2000:]
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-00000020.pth"], out[-3000:]

    # a base with other weights (the same architecture) is refused by name, before any model is built
    other = write_base(tmp_path / "other-base", codes["base"], seed=1)
    setup = load_script_at("finetune/lora.py").setup
    flags = dict(data=codes["data"], out_dir=killed, accelerator="cpu", template="plain", val_fraction=VAL_FRACTION,
                 global_batch_size=16, micro_batch_size=16, lora_r=16, lora_alpha=32.0, lora_key=True,
                 lora_projection=True, lora_mlp=True, lora_head=True, resume="auto")  # fmt: skip
    message = (
        rf"\S+step-00000020.pth is an adapter of the base checkpoint {codes['base']} \(lit_model.pth of [\d,]+ bytes, "
        rf"SHA-256 \w+\); --checkpoint_dir {other} has other weights .*Pass the base checkpoint it was trained on$"
    )
    with pytest.raises(ValueError, match=message):
        setup(checkpoint_dir=other, **flags)
    with pytest.raises(ValueError, match=r"holds an adapter of other settings .*'r': \(16, 8\)"):
        setup(checkpoint_dir=codes["base"], **{**flags, "lora_r": 8})

    proc = run("finetune/lora.py", *args, "--resume", "auto")
    assert "Resumed at step 20" in proc.stdout
    final = f"step-{LORA_STEPS:08d}.pth"
    expected, resumed = (torch.load(d / final, weights_only=True) for d in (lora_run, killed))
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for index, moments in expected["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], value), (index, key)

    # merging onto the other base is refused too
    with pytest.raises(ValueError, match=rf"--checkpoint_dir {other} has other weights"):
        load_script_at("scripts/merge_lora.py").merge(other, killed / final, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


FULL_STEPS = 100
FULL = [*COMMON, "--max_steps", str(FULL_STEPS), "--save_interval", "50", "--eval_interval", "50",
        "--learning_rate", "3e-3", "--micro_batch_size", "8"]  # fmt: skip


def test_full_finetuning_on_two_processes_learns_the_codes_and_converts(codes, tmp_path, capsys):
    """FSDP2 over 2 CPU processes (gloo); the sharded checkpoint converts with convert_pretrained_checkpoint.py."""
    out = tmp_path / "full"
    run("finetune/full.py", "--checkpoint_dir", str(codes["base"]), "--data", str(codes["data"]), "--out_dir",
        str(out), *FULL, devices=2)  # fmt: skip
    final = out / f"step-{FULL_STEPS:08d}.pth"
    assert final.is_dir() and (final / ".metadata").is_file()  # sharded
    lit = tmp_path / "lit"
    load_script_at("scripts/convert_pretrained_checkpoint.py").convert(final, codes["base"], output_dir=lit)
    assert json.loads((lit / "separators.json").read_text()) == {"bos": False, "eos": True}
    check_answers(lit, trained_records(codes["data"]), tmp_path / "hf", capsys)


@pytest.mark.parametrize("script", ["finetune/lora.py", "finetune/full.py", "scripts/merge_lora.py"])
def test_help_explains_every_flag(script):
    from prepared_data import help_text

    module = load_script_at(script)
    help_text(getattr(module, "merge", None) or module.setup)


def test_bad_flags_are_refused_before_any_work(codes, tmp_path):
    setup = load_script_at("finetune/lora.py").setup
    common = dict(checkpoint_dir=codes["base"], data=codes["data"], out_dir=tmp_path / "out", accelerator="cpu")
    with pytest.raises(ValueError, match="No layer is chosen for LoRA: set at least one of --lora_query"):
        setup(**common, lora_query=False, lora_value=False)
    with pytest.raises(ValueError, match="--lora_r 0 must be at least 1"):
        setup(**common, lora_r=0)
    with pytest.raises(ValueError, match="--save_interval 0 must be at least 1"):
        setup(**common, save_interval=0)
    with pytest.raises(ValueError, match="--micro_batch_size 3 does not divide the per-device batch 16"):
        setup(**common, micro_batch_size=3)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "step-00000010.pth").touch()
    with pytest.raises(FileExistsError, match="earlier run.*step-00000010.pth.*--resume auto"):
        setup(**{**common, "out_dir": earlier})
    with pytest.raises(FileNotFoundError, match="lit_model.pth' does not exist"):
        load_script_at("finetune/full.py").setup(**{**common, "checkpoint_dir": tmp_path})
    with pytest.raises(ValueError, match="is not a checkpoint of finetune/lora.py.*convert_pretrained_checkpoint"):
        full_checkpoint = tmp_path / "step-00000001.pth"
        torch.save({"model": {}, "hparams": {"model_config": {}}}, full_checkpoint)
        load_script_at("scripts/merge_lora.py").merge(codes["base"], full_checkpoint, tmp_path / "merged")


def test_a_frozen_mlp_projection_skips_its_weight_gradient():
    """LoRA leaves the MLP's output projection frozen and a plain nn.Linear, computed by the fused SwiGLU of
    lit_gpt/model.py: its backward skips the weight-gradient matmul (a third of that layer's backward work) and
    gives the input gradients of the trainable case."""
    from torch.utils.flop_counter import FlopCounterMode

    from lit_gpt.model import swiglu_linear

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(64, 96, generator=generator) for _ in range(2))
    weight = torch.randn(32, 96, generator=generator)
    flops, grads = {}, {}
    for trainable in (True, False):
        x, y, w = a.clone().requires_grad_(), b.clone().requires_grad_(), weight.clone().requires_grad_(trainable)
        out = swiglu_linear(x, y, w)
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
        flops[trainable], grads[trainable] = counter.get_total_flops(), (x.grad, y.grad)
        assert (w.grad is not None) == trainable
    assert flops[True] - flops[False] == 2 * 64 * 96 * 32  # the (32 x 64) @ (64 x 96) weight-gradient product
    for frozen_grad, trainable_grad in zip(grads[False], grads[True]):
        assert torch.equal(frozen_grad, trainable_grad)


def test_fit_warns_of_a_warmup_longer_than_the_run_and_says_when_nothing_is_left_to_train(tmp_path, capsys):
    """The default --warmup_steps 100 on a run of a few steps never reaches --learning_rate: warned of, as pretraining
    does; a resume from a checkpoint at or past --max_steps says why it trains nothing."""
    from types import SimpleNamespace

    from lit_gpt.training.finetune import fit

    fabric = SimpleNamespace(device=torch.device("cpu"), global_rank=0, print=print)
    state = {"hparams": {"warmup_steps": 100, "learning_rate": 3e-4}, "step_count": 6, "tokens_seen": 990}
    fit(fabric, None, None, [], [], state, accumulation=1, max_steps=4, out_dir=tmp_path)
    out = capsys.readouterr()
    assert "Warning: --warmup_steps 100 is longer than the 4 steps this run trains" in out.err
    assert "Nothing to train: the checkpoint is at step 6 and this run ends at step 4" in out.out
    assert out.out.endswith("Done: 6 steps, 990 tokens\n")


def fake_adapter_checkpoint(path: Path, base: Path, lora: LoRAConfig, separators: Optional[dict] = None) -> Path:
    """A checkpoint as finetune/lora.py saves it (adapter, settings, base record), of a random nonzero adapter."""
    from lit_gpt.training.finetune import base_record

    model = tiny_model()
    apply_lora(model, lora)
    randomize_adapters(model)
    hparams = {"lora": lora.to_dict(), "base": base_record(base), "model_config": model.config.to_dict()}
    if separators is not None:
        hparams["separators"] = separators
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": lora_state_dict(model), "hparams": hparams, "step_count": 1}, path)
    return path


def test_a_truncated_or_pickled_checkpoint_is_refused_in_one_line(codes, tmp_path):
    """--resume PATH and merge_lora.py used to stop with torch's traceback (`OSError: [Errno 22] Invalid argument`
    for a file cut short, torch's weights_only essay for pickled objects)."""
    import argparse

    from lit_gpt.training.checkpoint import latest_to_resume, load_metadata

    good = fake_adapter_checkpoint(tmp_path / "run" / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
    cut = tmp_path / "run" / "step-00000002.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp_path / "pickled" / "step-00000001.pth"
    pickled.parent.mkdir()
    torch.save({**torch.load(good, weights_only=True), "args": argparse.Namespace(lr=1)}, pickled)
    merge = load_script_at("scripts/merge_lora.py").merge
    for function in (load_metadata, lambda path: merge(codes["base"], path, tmp_path / "merged")):
        with pytest.raises(ValueError, match=r"step-00000002.pth cannot be read \(.*\): it is truncated or corrupt"):
            function(cut)
        with pytest.raises(ValueError, match=r"holds pickled Python objects.*pass --trust_pickle true\.$"):
            function(pickled)
    said = []  # --resume auto passes over the truncated newest one, naming it, for the whole one before it
    assert latest_to_resume(tmp_path / "run", say=said.append) == good
    assert len(said) == 1 and re.search(r"step-00000002.pth .*truncated or corrupt", said[0]), said
    assert load_metadata(pickled, trust_pickle=True)["args"].lr == 1
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_an_adapter_with_a_flipped_byte_or_its_digest_taken_away(codes, tmp_path):
    """merge_lora.py read the adapter with a torch.load of its own, without its digest: a flipped byte was merged
    into the weights. It reads it as every training checkpoint is read, its digest checked first."""
    from test_pretrain import flip_byte, strip_digest

    from lit_gpt.files import CorruptFile, seal_zip

    merge = load_script_at("scripts/merge_lora.py").merge
    adapters = []
    for name in ("flipped", "stripped"):
        path = fake_adapter_checkpoint(tmp_path / name / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
        state = torch.load(path, weights_only=True)
        state["hparams"]["checkpoint_digests"] = "sha256"  # as save_checkpoint writes it
        torch.save(state, path)
        seal_zip(path)
        flip_byte(path)
        adapters.append(path)
    strip_digest(adapters[1])
    with pytest.raises(CorruptFile, match=r"flipped/step-00000001.pth is corrupt: its bytes differ from the SHA-256"):
        merge(codes["base"], adapters[0], tmp_path / "merged")
    with pytest.raises(CorruptFile, match=r"stripped/step-00000001.pth has no SHA-256 though one was written with it"):
        merge(codes["base"], adapters[1], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_checks_the_adapter_before_writing_and_keeps_the_finetunings_separators(codes, tmp_path):
    """An adapter whose tensors do not fit its recorded settings is refused before the output directory is made
    (it used to be refused after, with torch's size-mismatch traceback, leaving a directory that a second merge
    calls not empty); a base whose separators.json changed after the finetuning merges with the separators the
    prompts were finetuned after, which generate/base.py then begins its prompts with."""
    import shutil

    merge = load_script_at("scripts/merge_lora.py").merge
    tampered = fake_adapter_checkpoint(tmp_path / "t" / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
    state = torch.load(tampered, weights_only=True)
    state["hparams"]["lora"]["r"] = 4
    torch.save(state, tampered)
    with pytest.raises(ValueError, match=r"does not fit its own LoRA settings .*other shapes \['transformer.h.0"):
        merge(codes["base"], tampered, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()

    base = tmp_path / "base"
    shutil.copytree(codes["base"], base)
    adapter = fake_adapter_checkpoint(tmp_path / "a" / "step-00000001.pth", base, LoRAConfig(r=2),
                                      separators={"bos": False, "eos": True})  # fmt: skip
    (base / "separators.json").write_text('{"bos": true, "eos": false}\n')  # written after the finetuning
    merge(base, adapter, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "separators.json").read_text()) == {"bos": False, "eos": True}


def test_flags_that_would_train_nothing_or_not_as_asked_are_refused(codes, tmp_path):
    setup = load_script_at("finetune/lora.py").setup
    common = dict(checkpoint_dir=codes["base"], data=codes["data"], out_dir=tmp_path / "out", accelerator="cpu",
                  precision="32-true", max_steps=1, global_batch_size=2, micro_batch_size=2)  # fmt: skip
    # 0 used to mean the model's block size (`max_seq_length or block_size`)
    with pytest.raises(ValueError, match="--max_seq_length 0 must be at least 1; leave it out for the model's block"):
        setup(**common, max_seq_length=0)
    # an adapter scaled by 0 changes no output: it used to train, and save, an adapter that does nothing
    with pytest.raises(ValueError, match="--lora_alpha 0.0 must be positive"):
        setup(**common, lora_alpha=0.0)


def test_full_finetuning_refuses_to_resume_a_pretraining_checkpoint(codes, tmp_path, capsys):
    """It used to load it and then stop at the data order: "the checkpoint's data order is of another seed (None,
    this run's 1337)"."""
    pretraining = tmp_path / "pretrain" / "step-00000100.pth"
    pretraining.parent.mkdir()
    hparams = {"model_name": "test-llama", "model_config": Config(**TEST_LLAMA).to_dict(), "world_size": 1}
    torch.save({"model": {}, "hparams": hparams, "train_dataloader": {"current_epoch": 1}}, pretraining)
    # before any work: it used to be refused after the settings were printed and the model was built
    base = tmp_path / "base"
    shutil.copytree(codes["base"], base)
    write_separators(base, DEFAULT_SEPARATORS)  # as the converters write it: no note that separators.json is missing
    line = refusal_in_process(
        capsys, "finetune/full.py", "--checkpoint_dir", str(base), "--data", str(codes["data"]), "--out_dir",
        str(tmp_path / "out"), "--accelerator", "cpu", "--devices", "1", "--precision", "32-true",
        "--global_batch_size", "2", "--micro_batch_size", "2", "--resume", str(pretraining),
    )  # fmt: skip
    assert line == (
        f"error: {pretraining} is not a checkpoint of finetune/full.py (it records no instruction data; a pretraining "
        "checkpoint?): to finetune its weights, convert it with scripts/convert_pretrained_checkpoint.py and pass "
        "that directory as --checkpoint_dir; to continue pretraining it, resume it with pretrain/tinyllama.py"
    )
    assert not (tmp_path / "out").exists()


def test_lora_refuses_to_resume_a_pretraining_checkpoint_as_what_it_is(codes, tmp_path, capsys):
    """A pretraining checkpoint (with the loader settings pretraining records) given to lora.py's --resume ended in a
    KeyError ('num_workers', which lora.py's settings lack); with that fixed, it was refused for its micro-batch size
    before being called what it is."""
    pretraining = tmp_path / "pretrain" / "step-00000004.pth"
    pretraining.parent.mkdir()
    hparams = {"model_name": "test-llama", "model_config": Config(**TEST_LLAMA).to_dict(), "world_size": 1}
    hparams.update(micro_batch_size=4, num_workers=1, seed=3407)
    torch.save({"model": {}, "hparams": hparams, "train_dataloader": {"current_epoch": 1}}, pretraining)
    base = tmp_path / "base"
    shutil.copytree(codes["base"], base)
    write_separators(base, DEFAULT_SEPARATORS)  # as the converters write it: no note that separators.json is missing
    line = refusal_in_process(
        capsys, "finetune/lora.py", "--checkpoint_dir", str(base), "--data", str(codes["data"]), "--out_dir",
        str(tmp_path / "out"), "--accelerator", "cpu", "--precision", "32-true", "--global_batch_size", "2",
        "--micro_batch_size", "2", "--resume", str(pretraining),
    )  # fmt: skip
    assert (
        line
        == f"error: {pretraining} is not a checkpoint of finetune/lora.py (it has no adapter); pass another --resume"
    )
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_cannot_be_written_is_refused_in_one_line(codes, tmp_path, monkeypatch):
    """A read-only disk or a path through a file used to stop the scripts with mkdir's traceback."""
    import errno

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    setup = load_script_at("finetune/lora.py").setup
    common = dict(checkpoint_dir=codes["base"], data=codes["data"], accelerator="cpu", precision="32-true",
                  max_steps=1, global_batch_size=2, micro_batch_size=2)  # fmt: skip
    with pytest.raises(FileExistsError, match=r"--out_dir \S+a-file/out cannot be made a directory \(Not a direc"):
        setup(**common, out_dir=a_file / "out")
    adapter = fake_adapter_checkpoint(tmp_path / "a" / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
    merge = load_script_at("scripts/merge_lora.py").merge
    with pytest.raises(ValueError, match=r"--output_dir '\S+a-file/merged' cannot be written \(Not a directory\)"):
        merge(codes["base"], adapter, a_file / "merged")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(FileExistsError, match=r"--out_dir \S+ro cannot be written \(Read-only file system\); pass"):
        setup(**common, out_dir=tmp_path / "ro")
    with pytest.raises(UserError, match=r"cannot write '\S+': read-only file system; choose a location you can"):
        merge(codes["base"], adapter, tmp_path / "ro")


def test_a_base_whose_tokenizer_changed_after_finetuning_is_refused(codes, tmp_path):
    """The weights alone were recorded: merge_lora.py used to copy whatever tokenizer the base directory held by
    then beside the merged weights, and a resume stopped late with a vague "other examples or encoding"."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(codes["base"], base)
    adapter = fake_adapter_checkpoint(tmp_path / "a" / "step-00000001.pth", base, LoRAConfig(r=2))
    model = bytearray((base / "tokenizer.model").read_bytes())
    model[-1] ^= 1  # another tokenizer (here: one byte of it)
    (base / "tokenizer.model").write_bytes(bytes(model))
    merge = load_script_at("scripts/merge_lora.py").merge
    with pytest.raises(ValueError, match=r"encoded with the tokenizer of \S+base; --checkpoint_dir \S+ has other "
                       r"tokenizer files \(changed, added or missing: tokenizer.model\)"):  # fmt: skip
        merge(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    shutil.copy(codes["base"] / "tokenizer.model", base)
    (base / "generation_config.json").write_text("{}")  # not a tokenizer file: no refusal
    merge(base, adapter, tmp_path / "merged")


def test_converting_an_adapter_checkpoint_points_to_merge_lora(codes, tmp_path):
    """It used to be refused as a checkpoint "changed after training or written by another tool" (no lm_head)."""
    adapter = fake_adapter_checkpoint(tmp_path / "a" / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
    convert = load_script_at("scripts/convert_pretrained_checkpoint.py").convert
    with pytest.raises(ValueError, match=rf"is a LoRA checkpoint .* `python scripts/merge_lora.py --checkpoint_dir "
                       rf"{codes['base']} --lora_checkpoint {adapter}`"):  # fmt: skip
        convert(adapter, codes["base"], output_dir=tmp_path / "lit")
    assert not (tmp_path / "lit").exists()


def test_resume_from_an_out_dir_points_to_its_checkpoints(codes, tmp_path):
    """`--resume out/run` (the run's folder, not a checkpoint) used to be called an incomplete sharded checkpoint."""
    from lit_gpt.training.checkpoint import load_metadata

    adapter = fake_adapter_checkpoint(tmp_path / "run" / "step-00000001.pth", codes["base"], LoRAConfig(r=2))
    with pytest.raises(FileNotFoundError, match=rf"run is a directory of checkpoints, not one: pass one of them \(the "
                       rf"newest is {adapter}\), or --resume auto with --out_dir \S+run"):  # fmt: skip
        load_metadata(tmp_path / "run")


def refusal(script: str, *args: str) -> str:
    """The refusal of running `script` with `args`: exit code 2, one stderr line and nothing on stdout."""
    return refusals(script, args)[0]


def refusal_in_process(capsys, script: str, *args: str) -> str:
    """`refusal`, through the script's own `cli(setup)` in this process (its __main__ block is that call; a Python
    start with torch and lightning costs several seconds here)."""
    from lit_gpt.cli import cli

    setup = load_script_at(script).setup
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(setup, args=list(args))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out[-3000:] + err[-3000:]
    assert out == "" and len(err.splitlines()) == 1, out[-3000:] + err[-3000:]
    return err.strip()


def refusals(script: str, *commands: list) -> List[str]:
    """`refusal` of each of `commands` (the args of one run of `script` each), all run at once: each is a Python start
    with torch and lightning (several seconds here), and the machine has at least two cores."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )  # fmt: skip
        for args in commands
    ]
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = []
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 2, stdout[-3000:] + stderr[-3000:]
        assert stdout == "" and len(stderr.splitlines()) == 1, stdout[-3000:] + stderr[-3000:]
        lines.append(stderr.strip())
    return lines


@pytest.mark.parametrize("script", ["finetune/lora.py", "finetune/full.py"])
def test_finetuning_checks_its_data_before_it_prints_or_touches_the_out_dir(codes, tmp_path, script):
    """A missing --data used to be reported only after the settings, the attention choice and "Seed set to 1337" had
    been printed and the out dir made; with an out dir of an earlier run, the earlier run was reported instead."""
    base = tmp_path / "base"
    shutil.copytree(codes["base"], base)
    write_separators(base, DEFAULT_SEPARATORS)  # as the converters write it: no note that separators.json is missing
    flags = ["--checkpoint_dir", str(base), *COMMON, "--devices", "1"][: None if "full" in script else -2]
    used = tmp_path / "used"
    used.mkdir()
    (used / "step-00000010.pth").write_bytes(b"an earlier run's checkpoint")
    missing = tmp_path / "missing.json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in codes["records"][:20]) + '\n{"instruction": "x"}\n')
    fresh = ["--out_dir", str(tmp_path / "fresh")]
    lines = refusals(
        script,
        [*flags, "--data", str(missing), "--out_dir", str(used)],
        [*flags, "--data", str(bad), *fresh],
        # a flag checked against the model's block size (256)
        [*flags, "--data", str(codes["data"]), *fresh, "--max_seq_length", "512"],
        # more rows per micro-batch than the data holds
        [*flags, "--data", str(codes["data"]), *fresh, "--micro_batch_size", "128", "--global_batch_size", "128"],
    )
    assert lines[0] == f"error: --data {missing}: no such file or folder"
    assert [p.name for p in used.iterdir()] == ["step-00000010.pth"]
    assert lines[1].startswith(f"error: 1 bad instruction records: {bad}:21: no 'output' string"), lines[1]
    assert lines[2].startswith("error: --max_seq_length 512 is longer than the model's block size 256"), lines[2]
    assert lines[3].startswith("error: 65 examples make no whole micro-batch of 128 rows"), lines[3]
    assert not (tmp_path / "fresh").exists()


def test_a_tokenizer_beyond_the_model_vocabulary_is_refused_before_any_step(tmp_path, prepared):
    """A checkpoint directory whose tokenizer (1,024 ids) is not its model's (512): the examples encode to ids the
    model has no embedding for. An IndexError at the first step before; now one line, exit 2, before any step."""
    from lit_gpt.tokenizer import Tokenizer

    base = write_base(tmp_path / "base", prepared["tokenizer"], seed=0)
    text = "".join(p.read_text() for p in sorted((ROOT / "lit_gpt").glob("*.py")))
    records = [{"instruction": text[i : i + 300], "output": text[i + 300 : i + 400]} for i in range(0, 40000, 400)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    top = max(max(Tokenizer(base).encode(r["instruction"] + r["output"]).tolist()) for r in records)
    assert top >= 512
    args = ["--checkpoint_dir", str(base), "--data", str(tmp_path / "data.json"), "--out_dir", str(tmp_path / "out")]
    cmd = [sys.executable, str(ROOT / "finetune" / "lora.py"), *args, *COMMON, "--max_steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "encodes to token id" in line and "embeddings for 512 ids" in line and str(base) in line, line
    assert "step 1" not in proc.stdout


def test_merge_onto_a_full_disk_is_one_line_and_keeps_the_earlier_merge(codes, lora_run, tmp_path, capsys):
    """merge_lora.py --overwrite true onto a disk with room for one merge but not two: it used to delete the earlier
    merge first; now the new one is written beside it, and the full disk is one line naming the folder, the free space
    and the space needed (before any work, since the earlier merge is not counted as free), exit 2, with the earlier
    merge byte-identical."""
    from lit_gpt.cli import cli

    merge = load_script_at("scripts/merge_lora.py").merge
    size = (codes["base"] / "lit_model.pth").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(disk)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        args = ["--checkpoint_dir", str(codes["base"]), "--lora_checkpoint", str(lora_run)]
        args += ["--output_dir", str(disk / "merged")]
        cli(merge, args)
        before = {p.name: p.read_bytes() for p in (disk / "merged").iterdir()}
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit:
            cli(merge, [*args, "--overwrite", "true"])
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the note on the base's separators
        assert exit.value.code == 2, err
        # refused before any work: the earlier merge's space is not free for the new one (check_room)
        assert err.startswith(f"error: cannot write {str(disk / 'merged')!r}: too little space left on its device"), err
        assert "MB free" in err and f"it needs about {size / 1e6:.1f} MB" in err, err
        assert {p.name: p.read_bytes() for p in (disk / "merged").iterdir()} == before
        assert [p.name for p in disk.iterdir()] == ["merged"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
