"""Generation with the KV cache, against transformers' greedy `generate` on the exported checkpoint."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.generate import generate, load_model, sample
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.training.fabric import L

ROOT = Path(__file__).resolve().parents[1]


def test_greedy_generation_equals_transformers(export_lit_dir, export_hf_dir):
    from transformers import AutoModelForCausalLM

    model = load_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), export_lit_dir)
    theirs = AutoModelForCausalLM.from_pretrained(export_hf_dir).eval()
    tokenizer = Tokenizer(export_lit_dir)
    for prompt in ("def forward(self, x):", "The model"):
        encoded = tokenizer.encode(prompt, bos=True)
        ours = generate(model, encoded, max_new_tokens=40, temperature=0.0)
        expected = theirs.generate(
            encoded.long().view(1, -1), max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0]
        assert ours.tolist() == expected.tolist()
        assert len(ours) == len(encoded) + 40


def test_generation_stops_at_eos_and_respects_block_size(export_lit_dir):
    model = load_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), export_lit_dir)
    prompt = torch.tensor([1, 300, 301], dtype=torch.int32)
    greedy = generate(model, prompt, max_new_tokens=5, temperature=0.0)
    eos = greedy[3].item()  # pretend the first generated token is eos
    assert generate(model, prompt, max_new_tokens=5, temperature=0.0, eos_id=eos).tolist() == greedy[:4].tolist()
    with pytest.raises(ValueError, match="lower --max_new_tokens to 253"):
        generate(model, prompt, max_new_tokens=254)


@pytest.mark.parametrize("bos, stops", [(True, True), (False, False)])
def test_generate_script_stops_at_bos_for_a_model_pretrained_with_bos_alone(export_lit_dir, tmp_path, bos, stops):
    """TinyLlama's convention puts bos before each document and no eos: such a model ends a text by starting the
    next document, and a sample ran on into it to --max_new_tokens. The weights here make bos the greedy choice
    after any token: the residual stream is the token's embedding (block outputs zeroed), whose first component is 1,
    and only the head's bos row reads it."""
    import shutil

    from lit_gpt.data.separators import Separators, write_separators
    from lit_gpt.files import seal_zip

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(export_lit_dir, checkpoint)
    bos_id = Tokenizer(checkpoint).bos_id
    state = torch.load(checkpoint / "lit_model.pth", weights_only=True)
    for name, tensor in state.items():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            tensor.zero_()
    state["transformer.wte.weight"][:, 0] = 1.0
    state["transformer.ln_f.weight"].fill_(1.0)
    state["lm_head.weight"].zero_()
    state["lm_head.weight"][bos_id, 0] = 5.0
    torch.save(state, checkpoint / "lit_model.pth")
    seal_zip(checkpoint / "lit_model.pth")  # the edited weights carry their digest again, as a written checkpoint does
    write_separators(checkpoint, Separators(bos=bos, eos=not bos))
    proc = subprocess.run(
        [sys.executable, "generate/base.py", "--checkpoint_dir", str(checkpoint), "--prompt", "def forward"]
        + ["--max_new_tokens", "6", "--temperature", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Sample 1: {1 if stops else 6} tokens" in proc.stderr, proc.stderr


def test_stop_ids_follow_the_separators(export_lit_dir):
    from lit_gpt.data.separators import Separators, stop_ids

    tokenizer = Tokenizer(export_lit_dir)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    assert stop_ids(tokenizer, Separators(bos=True, eos=False)) == [eos, bos]
    assert stop_ids(tokenizer, Separators(bos=False, eos=True)) == [eos]
    assert stop_ids(tokenizer, Separators(bos=True, eos=True)) == [eos]


def test_sample_top_k():
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    assert sample(logits, temperature=0.0).item() == 1
    torch.manual_seed(0)
    draws = {sample(logits, temperature=1.0, top_k=2).item() for _ in range(200)}
    assert draws == {1, 2}


def test_sample_temperature():
    """Logits 5 and 4: at temperature 1 the second token is drawn 27% of the time, at 0.2 under 1%."""
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    torch.manual_seed(0)
    hot = [sample(logits, temperature=1.0).item() for _ in range(400)]
    cold = [sample(logits, temperature=0.2).item() for _ in range(400)]
    assert 70 < hot.count(2) < 150
    assert cold.count(2) < 12 and cold.count(1) + cold.count(2) == 400


def test_generate_script(export_lit_dir):
    proc = subprocess.run(
        [sys.executable, "generate/base.py", "--checkpoint_dir", str(export_lit_dir), "--prompt", "def forward"]
        + ["--max_new_tokens", "20", "--num_samples", "2", "--temperature", "0.8", "--top_k", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("def forward") == 2
    assert proc.stderr.count("tokens/s") == 2


def test_generate_script_names_a_missing_checkpoint(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # a mistyped --checkpoint_dir: the error is about the checkpoint, not about a missing tokenizer
    with pytest.raises(FileNotFoundError, match="lit_model.pth' does not exist.*convert_pretrained_checkpoint"):
        script.main(tmp_path / "typo", prompt="x")


def test_a_training_checkpoint_given_as_checkpoint_dir_is_refused_with_the_command_that_converts_it(
    fabric_checkpoints, export_tokenizer_dir, tmp_path
):
    """`--checkpoint_dir out/demo/micro-llama/step-00000100.pth` used to say `.../step-00000100.pth/lit_model.pth does
    not exist`. The command it gives, with the tokenizer filled in, makes the lit checkpoint directory it names."""
    import re
    import shlex

    from conftest import TEST_LLAMA

    from lit_gpt.config import Config
    from lit_gpt.weights import lit_checkpoint_files

    state = torch.load(fabric_checkpoints["single"], weights_only=True)
    state["hparams"] = {"model_name": "test-llama", "model_config": Config(**TEST_LLAMA).to_dict()}  # as pretraining's
    step = tmp_path / "out" / "run" / "step-00000002.pth"
    step.parent.mkdir(parents=True)
    torch.save(state, step)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "generate" / "base.py"), "--checkpoint_dir", "out/run/step-00000002.pth"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    command = (
        "python scripts/convert_pretrained_checkpoint.py --checkpoint_file out/run/step-00000002.pth --tokenizer_dir "
        "<the tokenizer its data was prepared with> --output_dir checkpoints/lit-test-llama"
    )
    assert proc.stderr == (
        "error: 'out/run/step-00000002.pth' is a training checkpoint, not a lit checkpoint directory: convert it into "
        f"one with `{command}`, then pass checkpoints/lit-test-llama\n"
    )
    args = shlex.split(re.sub(r"<[^>]*>", str(export_tokenizer_dir), command))[2:]
    converted = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_pretrained_checkpoint.py"), *args],
                               cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert lit_checkpoint_files(tmp_path / "checkpoints" / "lit-test-llama")[0].name == "test-llama"


def test_other_files_given_as_checkpoint_dir_say_what_makes_a_lit_checkpoint_of_them(export_lit_dir, tmp_path):
    """Every script's --checkpoint_dir goes through `lit_checkpoint_files`: a file of a lit checkpoint directory, an
    adapter of finetune/lora.py, a checkpoint of finetune/full.py (the base it records holds the tokenizer) and the
    --out_dir of such a run are each named with what to pass or run."""
    from conftest import TEST_LLAMA

    from lit_gpt.config import Config
    from lit_gpt.weights import lit_checkpoint_files

    with pytest.raises(FileNotFoundError, match=rf"lit_model.pth' is a file in the lit checkpoint directory "
                       rf"'{export_lit_dir}': pass the directory$"):  # fmt: skip
        lit_checkpoint_files(export_lit_dir / "lit_model.pth")
    adapter = tmp_path / "lora" / "step-00000004.pth"
    adapter.parent.mkdir()
    torch.save({"model": {}, "hparams": {"lora": {"r": 8}, "base": {"checkpoint_dir": "checkpoints/lit-x"}}}, adapter)
    with pytest.raises(FileNotFoundError, match=r"is a LoRA checkpoint of finetune/lora.py .* `python scripts/"
                       rf"merge_lora.py --checkpoint_dir checkpoints/lit-x --lora_checkpoint {adapter} --output_dir "
                       r"checkpoints/lit-x-lora`, then pass checkpoints/lit-x-lora$"):  # fmt: skip
        lit_checkpoint_files(adapter)
    full = tmp_path / "full" / "step-00000004.pth"
    full.parent.mkdir()
    config = Config(**TEST_LLAMA).to_dict()
    hparams = {"template": "alpaca", "checkpoint_dir": str(export_lit_dir), "model_config": config}
    torch.save({"model": {}, "hparams": hparams}, full)
    command = (f"python scripts/convert_pretrained_checkpoint.py --checkpoint_file {full} --tokenizer_dir "
               f"{export_lit_dir} --output_dir {export_lit_dir}-full")  # fmt: skip
    with pytest.raises(FileNotFoundError) as refused:
        lit_checkpoint_files(full.parent)
    assert str(refused.value) == (
        f"{str(full.parent)!r} is the output folder of a training run (step-*.pth checkpoints), not a lit checkpoint "
        f"directory (lit_model.pth); for its newest checkpoint, convert it into one with `{command}`, then pass "
        f"{export_lit_dir}-full"
    )


def test_generation_samples_only_the_tokenizers_ids():
    """A model's padded vocabulary (micro-llama: 32000) can be larger than its tokenizer's (a 2000-token one trained
    on one's own corpus): ids the tokenizer lacks are never sampled, which its decoding would fail on."""
    from lit_gpt.config import Config
    from lit_gpt.model import GPT

    torch.manual_seed(0)
    model = GPT(Config.from_name("micro-llama", n_layer=1)).eval()
    prompt = torch.tensor([1, 5, 9])
    out = generate(model, prompt, 40, temperature=2.0, vocab_size=50)
    assert out.size(0) == 43 and int(out[3:].max()) < 50
    assert int(generate(model, prompt, 40, temperature=2.0)[3:].max()) >= 50  # without the limit: any of 32000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"temperature": -0.5}, "--temperature -0.5 must not be negative"),  # sampled the inverted distribution
        ({"top_k": 0}, "--top_k 0 must be at least 1"),
        ({"max_new_tokens": -3}, "--max_new_tokens -3 must not be negative"),
        ({"num_samples": 0}, "^--num_samples 0 must be at least 1"),  # the line blamed --max_new_tokens first
    ],
)
def test_bad_sampling_flags_are_refused(tmp_path, flags, message):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match=message):
        module.main(checkpoint_dir=tmp_path, **flags)


def test_a_prompt_beyond_the_model_vocabulary_is_refused(export_lit_dir, prepared, tmp_path):
    """A checkpoint directory whose tokenizer (1,024 ids) is not its model's (512): a prompt with ids the model has no
    embedding for ended in an IndexError; now one line, exit 2, before the weights are read."""
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(export_lit_dir, checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).unlink(missing_ok=True)
    shutil.copy(prepared["tokenizer"] / "tokenizer.model", checkpoint / "tokenizer.model")
    prompt = (ROOT / "lit_gpt" / "model.py").read_text()[:400]  # under the block size of 256 tokens
    assert max(Tokenizer(checkpoint).encode(prompt).tolist()) >= 512
    proc = subprocess.run(
        [sys.executable, "generate/base.py", "--checkpoint_dir", str(checkpoint), "--prompt", prompt]
        + ["--max_new_tokens", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "the prompt encodes to token id" in line and "embeddings for 512 ids" in line, line
