"""Every stage after pretraining on the reduced shape of each new family (issue 33): Llama 3.2 (tied embeddings,
Llama 3's RoPE), Qwen2.5 (biases on q/k/v), Qwen3 (QK-norm per head, a head size apart from the width) and OLMo 2 (the
norms after attention and MLP, QK-norm over the projections). One pretraining per family on text prepared with a
byte-level BPE tokenizer of `train_tokenizer.py --kind bpe`, shared by the stages: generation, perplexity, LoRA and its
merge, full finetuning, the harness on a local task."""

import contextlib
import io
import json
import math
import os
import random
import string
from pathlib import Path

import pytest
import torch
from test_shapes import FAMILIES, write_reduced_config_json

from lit_gpt.cli import cli
from lit_gpt.config import Config
from lit_gpt.lora import LoRAConfig, apply_lora
from lit_gpt.model import GPT
from lit_gpt.weights import load_lit_state_dict

pytest.importorskip("transformers")  # the reduced config.json is written by transformers' config classes

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
CHOICE = str(ROOT / "tests" / "tasks" / "tiny_choice.yaml")


def load_script_at(relative: str):
    from test_finetune import load_script_at

    return load_script_at(relative)


@contextlib.contextmanager
def one_thread():
    """As the scripts' subprocesses with OMP_NUM_THREADS=1: tiny models run faster on one thread of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_in_process(script: str, *args: str) -> str:
    """`script`'s command line, run in this process (a Python start with lightning costs ~6 s); what it printed.

    Fabric makes this process a 1-process group and sets MASTER_PORT, LOCAL_RANK, ...: both are undone after, as
    conftest.py's `_no_distributed_leftovers` does after each test (a module-scoped fixture runs before it saves the
    environment), or later tests' subprocesses take themselves for launched ranks."""
    printed, saved = io.StringIO(), dict(os.environ)
    try:
        with one_thread(), contextlib.redirect_stdout(printed):
            cli(load_script_at(script).setup, list(args))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    return printed.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A 512-token byte-level BPE (tokenizer.json and tokenizer_config.json only), the corpus prepared with it
    (eos after each document), and an instruction file of made-up codes."""
    from prepared_data import load_script

    from lit_gpt.data.prepare import prepare
    from lit_gpt.data.readers import TextOptions

    tmp = tmp_path_factory.mktemp("family-stages")
    text = (ROOT / "tests" / "tokenizer_corpus.txt").read_text()
    tokenizer = tmp / "bpe"
    with contextlib.redirect_stdout(io.StringIO()):
        load_script("train_tokenizer").train(input=str(ROOT / "tests" / "tokenizer_corpus.txt"), output_dir=tokenizer,
                                             vocab_size=VOCAB, kind="bpe")  # fmt: skip
    (tmp / "docs").mkdir()
    pieces = [text[i : i + 4000] for i in range(0, 120_000, 4000)]
    for i, piece in enumerate(pieces):
        (tmp / "docs" / f"{i}.txt").write_text(piece)
    prepare("text", None, str(tmp / "tokens"), tokenizer, 33 * 64, num_workers=1, verbose=False,
            inputs=[str(tmp / "docs")], text_options=TextOptions())  # fmt: skip
    rng = random.Random(0)
    records = [
        {"instruction": f"What is the code of {''.join(rng.choices(string.ascii_lowercase, k=4))}?",
         "output": "".join(rng.choices(string.digits, k=4))}
        for _ in range(24)
    ]  # fmt: skip
    (tmp / "codes.json").write_text(json.dumps(records))
    return {"tokenizer": tokenizer, "tokens": tmp / "tokens", "codes": tmp / "codes.json", "tmp": tmp}


PRETRAIN_STEPS = 8
# the finetuning scripts' flags of every stage: a few steps on the codes
FLAGS = ["--accelerator", "cpu", "--precision", "32-true", "--template", "plain", "--global_batch_size", "4",
         "--micro_batch_size", "4", "--warmup_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module", params=FAMILIES)
def pretrained(request, corpus) -> dict:
    """The family's reduced shape (`--model_config`, 512 tokens) pretrained for a few steps on the prepared corpus and
    converted into a lit checkpoint directory with the tokenizer."""
    from test_pretrain import COMMON, metrics, model_weights

    name, tmp = request.param, corpus["tmp"] / request.param
    model_config = write_reduced_config_json(name, tmp / "config")
    common = list(COMMON)
    del common[common.index("--model_name") : common.index("--model_name") + 2]
    out = tmp / "pretrain"
    run_in_process("pretrain/tinyllama.py", *common, "--model_config", str(model_config), "--devices", "1",
                   "--train_data", f"{{{corpus['tokens']}: 1}}", "--val_data", str(corpus["tokens"]),
                   "--out_dir", str(out), "--max_steps", str(PRETRAIN_STEPS), "--eval_interval", "100",
                   "--save_interval", str(PRETRAIN_STEPS), "--learning_rate", "1e-2")  # fmt: skip
    losses = metrics(out)
    assert losses[PRETRAIN_STEPS] < losses[1] - 0.3, losses
    if Config.from_name(name).tie_embeddings:  # trained as one weight (the model was materialized from meta)
        weights = model_weights(out / f"step-{PRETRAIN_STEPS:08d}.pth")
        assert torch.equal(weights["lm_head.weight"], weights["transformer.wte.weight"])
    lit = tmp / "lit"
    load_script_at("scripts/convert_pretrained_checkpoint.py").convert(
        out / f"step-{PRETRAIN_STEPS:08d}.pth", corpus["tokenizer"], output_dir=lit
    )
    return {"name": name, "lit": lit, "tmp": tmp, "first_loss": losses[1]}


def lit_model(checkpoint_dir: Path) -> GPT:
    config = Config.from_file(checkpoint_dir / "lit_config.json")
    model = GPT(config)
    model.load_state_dict(load_lit_state_dict(checkpoint_dir / "lit_model.pth"), strict=True)
    return model.eval()


def test_the_lit_checkpoint_is_the_family_and_keeps_a_tied_head_tied(pretrained):
    config = Config.from_file(pretrained["lit"] / "lit_config.json")
    entry = Config.from_name(pretrained["name"])
    for switch in ("tie_embeddings", "attn_bias", "norm_qk", "norm_placement"):
        assert getattr(config, switch) == getattr(entry, switch), switch
    model = lit_model(pretrained["lit"])
    assert (model.lm_head.weight is model.transformer.wte.weight) == entry.tie_embeddings


def test_generation_is_the_greedy_continuation_of_the_model(pretrained, capsys):
    """generate/base.py (the KV cache) prints the text of the tokens that argmax over full forward passes gives."""
    from lit_gpt.data.separators import read_separators
    from lit_gpt.tokenizer import Tokenizer

    lit = pretrained["lit"]
    capsys.readouterr()
    with one_thread():
        load_script_at("generate/base.py").main(checkpoint_dir=lit, prompt="def main", max_new_tokens=12,
                                                 temperature=0.0, precision="32-true")  # fmt: skip
    printed = capsys.readouterr().out
    tokenizer, separators = Tokenizer(lit), read_separators(lit)
    assert not separators.bos and separators.eos  # the prompt follows the eos that ended every document
    ids = [tokenizer.eos_id, *tokenizer.encode_ids("def main")]
    model = lit_model(lit)
    with torch.no_grad():
        for _ in range(12):
            next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
            if next_id == tokenizer.eos_id:
                break
            ids.append(next_id)
    expected = tokenizer.decode(ids[1:])
    assert expected.startswith("def main") and len(ids) > 1 + len(tokenizer.encode_ids("def main"))
    assert expected in printed, (expected, printed)


def test_perplexity_is_the_model_loss_on_the_blocks(pretrained, corpus):
    """eval/perplexity.py on the prepared tokens: the model's mean loss there, below the untrained model's."""
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        result = load_script_at("eval/perplexity.py").main(checkpoint_dir=pretrained["lit"], data_dir=corpus["tokens"],
                                                          num_blocks=4, block_size=32, batch_size=2,
                                                          precision="32-true")  # fmt: skip
    dataset = StreamingDataset(str(corpus["tokens"]), item_loader=TokensLoader(block_size=33), shuffle=False)
    blocks = torch.stack([dataset[i] for i in range(4)]).long()
    model = lit_model(pretrained["lit"])
    model.fused_loss = False
    with torch.no_grad():
        loss = model(blocks[:, :-1], targets=blocks[:, 1:]).item()
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
    assert result["loss"] < pretrained["first_loss"] - 0.2  # below the untrained model's


def test_lora_on_every_target_merges_into_the_logits_of_the_adapted_model(pretrained, corpus):
    """finetune/lora.py with every target that the family allows, a few steps; scripts/merge_lora.py: the merged
    checkpoint (an ordinary GPT of the same architecture) gives the logits of the base with its adapter."""
    lit, out, merged = pretrained["lit"], pretrained["tmp"] / "lora", pretrained["tmp"] / "merged"
    tied = Config.from_file(lit / "lit_config.json").tie_embeddings
    run_in_process("finetune/lora.py", "--checkpoint_dir", str(lit), "--data", str(corpus["codes"]), "--out_dir",
                   str(out), *FLAGS, "--max_steps", "3", "--save_interval", "3", "--learning_rate", "1e-2",
                   "--lora_r", "4", "--lora_key", "true", "--lora_projection", "true", "--lora_mlp", "true",
                   "--lora_head", str(not tied).lower())  # fmt: skip
    adapter = out / "step-00000003.pth"
    with contextlib.redirect_stdout(io.StringIO()):
        load_script_at("scripts/merge_lora.py").merge(lit, adapter, merged)
    checkpoint = torch.load(adapter, weights_only=True)
    base = lit_model(lit)
    apply_lora(base, LoRAConfig(**checkpoint["hparams"]["lora"]))
    missing, unexpected = base.load_state_dict(checkpoint["model"], strict=False)
    assert not unexpected and not any("lora_" in k for k in missing)
    base.eval()  # the adapters' dropout off
    merged_model = lit_model(merged)
    assert Config.from_file(merged / "lit_config.json") == Config.from_file(lit / "lit_config.json")
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted, before = base(idx), lit_model(lit)(idx)
        torch.testing.assert_close(merged_model(idx), adapted, rtol=1e-5, atol=1e-5)
    assert (adapted - before).abs().max() > 1e-3  # the adapter changed the model


def test_an_adapter_on_a_tied_head_is_refused_by_finetuning_and_merge(pretrained, corpus, capsys):
    """A tied head is the embedding: its adapter merged into lm_head.weight was lost on load (the embedding's copy of
    the weight won), so the merged model answered as the base. Refused in one line, before any work."""
    from test_cli import refusal

    from lit_gpt.training.finetune import base_record

    lit, tmp = pretrained["lit"], pretrained["tmp"]
    config = Config.from_file(lit / "lit_config.json")
    if not config.tie_embeddings:
        pytest.skip("the head of this family is a weight of its own")
    args = ["--checkpoint_dir", str(lit), "--data", str(corpus["codes"]), "--out_dir", str(tmp / "head")]
    line = refusal(
        capsys, load_script_at("finetune/lora.py").setup, *args, *FLAGS, "--max_steps", "1", "--lora_head", "true"
    )
    assert f"--lora_head true: the output head of {config.name} is its token embedding" in line
    assert line.rstrip().endswith("train with --lora_head false") and not (tmp / "head").exists()
    # an adapter of the head (as an earlier version trained it) is refused by merge_lora.py
    lora = LoRAConfig(r=2, query=False, value=False, head=True)
    model = lit_model(lit)
    apply_lora(model, lora)
    adapter = tmp / "head-adapter" / "step-00000001.pth"
    adapter.parent.mkdir()
    torch.save({"model": {k: v for k, v in model.state_dict().items() if "lora_" in k}, "step_count": 1,
                "hparams": {"lora": lora.to_dict(), "base": base_record(lit), "model_config": config.to_dict()}},
               adapter)  # fmt: skip
    with pytest.raises(ValueError, match=f"{adapter} adapts the head: the output head of {config.name} is its token"):
        load_script_at("scripts/merge_lora.py").merge(lit, adapter, tmp / "head-merged")
    assert not (tmp / "head-merged").exists()


def test_full_finetuning_trains_and_converts(pretrained, corpus):
    from test_pretrain import metrics

    lit, out = pretrained["lit"], pretrained["tmp"] / "full"
    run_in_process("finetune/full.py", "--checkpoint_dir", str(lit), "--data", str(corpus["codes"]), "--out_dir",
                   str(out), *FLAGS, "--devices", "1", "--max_steps", "3", "--save_interval", "3",
                   "--learning_rate", "1e-3")  # fmt: skip
    losses = metrics(out)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    finetuned = pretrained["tmp"] / "full-lit"
    load_script_at("scripts/convert_pretrained_checkpoint.py").convert(out / "step-00000003.pth", lit,
                                                                      output_dir=finetuned)  # fmt: skip
    before, after = lit_model(lit), lit_model(finetuned)
    assert (after.lm_head.weight is after.transformer.wte.weight) == after.config.tie_embeddings
    assert not torch.equal(before.transformer.h[0].attn.attn.weight, after.transformer.h[0].attn.attn.weight)


def test_harness_scores_the_local_multiple_choice_task(pretrained, tmp_path):
    pytest.importorskip("lm_eval")
    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        result = load_script_at("eval/harness.py").main(checkpoint_dir=pretrained["lit"], tasks=CHOICE, limit=4,
                                                       batch_size=4, precision="32-true",
                                                       out_file=tmp_path / "scores.json")  # fmt: skip
    scores = result["scores"]
    assert set(scores) == {"tiny_choice/acc", "tiny_choice/acc_norm"}, scores
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert (tmp_path / "scores.json").is_file()
