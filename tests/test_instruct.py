"""Instruction data for finetuning (lit_gpt/data/instruct.py): reading records, templates, prompt masking, truncation,
padded and packed batches, exact continuation after a resume, the held-out split, and generate/base.py --template."""

import collections
import gzip
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from lit_gpt.cli import UserError
from lit_gpt.data.instruct import (
    IGNORE_INDEX,
    TEMPLATES,
    InstructionBatches,
    apply_template,
    encode_example,
    encode_examples,
    encode_prompt,
    load_instructions,
    split_instructions,
    validation_batches,
)
from lit_gpt.data.separators import Separators
from lit_gpt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def records(n: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = torch.randint(1, 30, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g).tolist()
        out.append({
            "instruction": f"What is the code of item {i}?",
            "input": "in the catalog" if i % 3 == 0 else "",
            "output": " ".join(f"w{w}" for w in words) or "none",
        })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tokenizer(export_tokenizer_dir):
    return Tokenizer(export_tokenizer_dir)


def test_load_json_array_and_json_lines_with_custom_keys(tmp_path):
    folder = tmp_path / "data"
    (folder / "more").mkdir(parents=True)
    array = [{"q": {"text": "Say hi"}, "ctx": "to Bob", "a": "Hi Bob"}, {"q": {"text": "Count"}, "a": "1 2 3"}]
    # a pretty-printed array with a byte order mark (Windows editors)
    (folder / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(array, indent=2).encode())
    rows = [{"q": {"text": "Add 2 and 2"}, "ctx": None, "a": "4"}, {"q": {"text": "Echo"}, "ctx": "x", "a": "x"}]
    with gzip.open(folder / "more" / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (folder / "notes.txt").write_text("not data")  # not a JSON file: not read
    loaded = load_instructions(folder, instruction_key="q.text", input_key="ctx", output_key="a")
    assert loaded == [
        {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"},
        {"instruction": "Count", "input": "", "output": "1 2 3"},
        {"instruction": "Add 2 and 2", "input": "", "output": "4"},
        {"instruction": "Echo", "input": "x", "output": "x"},
    ]
    assert load_instructions([folder / "more" / "b.jsonl.gz"], "q.text", "ctx", "a") == loaded[2:]
    with pytest.raises(UserError, match="notes.txt is not a JSON or JSON-lines file"):
        load_instructions(folder / "notes.txt")


def test_bad_records_are_named_by_file_and_line(tmp_path):
    lines = [
        '{"instruction": "a", "output": "b"}',
        "",
        '{"instruction": "c", "output": ',  # line 3: invalid JSON
        '["not", "an", "object"]',  # line 4
        '{"instruction": "d"}',  # line 5: no output
        '{"instruction": "e", "output": "f", "input": 3}',  # line 6: input not a string
        '{"instruction": "g", "output": "h"}',
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_instructions(jsonl)
    message = str(e.value)
    assert "\n" not in message and message.startswith("4 bad instruction records: ")
    assert f"{jsonl}:3: invalid JSON" in message and f"{jsonl}:4: not a JSON object but an array" in message
    assert f"{jsonl}:5: no 'output' string" in message and "and 1 more" in message
    assert "--skip_bad_records true" in message
    problems = []
    kept = load_instructions(jsonl, skip_bad_records=True, problems=problems)
    assert [r["instruction"] for r in kept] == ["a", "g"]
    assert [(p.line, p.reason) for p in problems][3] == (6, "'input' is a number, not a string")

    # a JSON array: each element named by the line it starts on
    array = tmp_path / "train.json"
    array.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"output": "b"},\n  {"instruction": "c",\n'
                     '   "output": 5}\n]\n')  # fmt: skip
    at = re.escape(str(array))
    with pytest.raises(UserError, match=rf"2 bad .*{at}:3: no 'instruction' string; {at}:4: 'output' is a number"):
        load_instructions(array)
    array.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]')
    with pytest.raises(UserError, match=rf"{at}:2: invalid JSON array"):
        load_instructions(array)
    assert load_instructions(array, skip_bad_records=True) == [{"instruction": "a", "input": "", "output": "b"}]


def test_templates():
    alpaca = apply_template("alpaca", "Name a color.")
    assert alpaca.endswith("### Instruction:\nName a color.\n\n### Response:\n") and "### Input:" not in alpaca
    with_input = apply_template("alpaca", "Translate.", "chat")
    assert with_input.endswith("### Instruction:\nTranslate.\n\n### Input:\nchat\n\n### Response:\n")
    assert apply_template("plain", "Translate.", "chat") == "Translate.\nchat\n"
    assert apply_template("plain", "Translate.") == apply_template("plain", "Translate.", " ") == "Translate.\n"
    assert apply_template("plain", "Use {braces}", "{x}") == "Use {braces}\n{x}\n"
    assert set(TEMPLATES) == {"alpaca", "plain"}
    with pytest.raises(UserError, match="--template 'chatml' is not a template; choose one of alpaca, plain"):
        apply_template("chatml", "x")


def test_prompt_tokens_are_masked(tokenizer):
    example = {"instruction": "Name the code of X.", "input": "table 3", "output": "Y 42"}
    prompt = tokenizer.encode_ids(apply_template("alpaca", example["instruction"], example["input"]))
    response = tokenizer.encode_ids(example["output"])
    for separators, prefix in [(Separators(bos=False, eos=True), tokenizer.eos_id), (Separators(True, False), 1)]:
        ids, labels = encode_example(tokenizer, example, "alpaca", 256, separators=separators)
        assert ids.dtype == labels.dtype == torch.int64
        assert ids.tolist() == [prefix] + prompt + response + [tokenizer.eos_id]
        n_prompt = 1 + len(prompt)
        assert (labels[:n_prompt] == IGNORE_INDEX).all()
        assert labels[n_prompt:].tolist() == ids[n_prompt:].tolist()  # every response token and eos is a label
        assert (
            encode_prompt(tokenizer, example["instruction"], "alpaca", "table 3", separators) == ids[:n_prompt].tolist()
        )
    ids, labels = encode_example(tokenizer, example, "alpaca", 256, mask_prompt=False)
    assert labels.tolist() == ids.tolist()


def test_long_examples_keep_the_prompts_start(tokenizer):
    example = {"instruction": "Spell it.", "input": "", "output": "a b c d e f g h i j k l m n o p"}
    full, full_labels = encode_example(tokenizer, example, "plain", 256)
    n_prompt = int((full_labels == IGNORE_INDEX).sum())
    ids, labels = encode_example(tokenizer, example, "plain", n_prompt + 2)
    assert ids.tolist() == full[: n_prompt + 3].tolist()  # max_seq_length + 1 tokens: the response's end is cut
    assert labels[n_prompt:].tolist() == full[n_prompt : n_prompt + 3].tolist()
    # a prompt that fills the window leaves nothing to train on: left out, with a note
    kept = encode_examples(tokenizer, [example, {**example, "output": "x"}], "plain", n_prompt - 1)
    assert kept == []
    assert len(encode_examples(tokenizer, [example], "plain", n_prompt - 1, mask_prompt=False)) == 1
    assert len(encode_examples(tokenizer, [example], "plain", n_prompt)) == 1  # the first response token remains


def test_padded_batches(tokenizer):
    encoded = encode_examples(tokenizer, records(10), "alpaca", 256)
    for padding in ("longest", "max_seq_length"):
        batches = InstructionBatches(encoded, micro_batch_size=4, max_seq_length=256, padding=padding, shuffle=False)
        assert len(batches) == 2  # 10 examples: two whole micro-batches of 4
        inputs, targets = batches.epoch_batches()[0]
        longest = max(len(x) for x, _ in encoded[:4]) - 1
        assert inputs.shape == targets.shape == (4, longest if padding == "longest" else 256)
        for row, (x, y) in enumerate(encoded[:4]):
            n = len(x) - 1
            assert inputs[row, :n].tolist() == x[:-1].tolist() and targets[row, :n].tolist() == y[1:].tolist()
            assert (inputs[row, n:] == 0).all() and (targets[row, n:] == IGNORE_INDEX).all()


def test_packed_batches_take_no_loss_across_examples(tokenizer):
    encoded = encode_examples(tokenizer, records(40), "plain", 96, mask_prompt=False)
    packed = InstructionBatches(encoded, micro_batch_size=1, max_seq_length=96, packing=True, shuffle=False)
    # packing at least halves the rows (the exact count follows the test tokenizer, which conftest trains on the
    # library's own source: 20 of 40 after one edit of lit_gpt/, 19 before)
    assert len(packed) == len(packed.rows) <= len(encoded) / 2 and all(len(x) <= 97 for x, _ in packed.rows)
    assert sum(len(x) for x, _ in packed.rows) == sum(len(x) for x, _ in encoded)  # each example whole, once
    # the (input, target) pairs that carry a loss are exactly those of the examples on their own: none from an
    # example's eos to the next one's first token
    own = collections.Counter()
    for x, y in encoded:
        own.update((a, b) for a, b in zip(x[:-1].tolist(), y[1:].tolist()) if b != IGNORE_INDEX)
    pairs = collections.Counter()
    for inputs, targets in packed.epoch_batches():
        assert inputs.shape == targets.shape == (1, 96)
        pairs.update((a, b) for a, b in zip(inputs[0].tolist(), targets[0].tolist()) if b != IGNORE_INDEX)
    assert pairs == own
    inputs, targets = packed.epoch_batches()[0]
    eos = inputs[0] == tokenizer.eos_id
    boundaries = (eos[:-1] & eos[1:]).nonzero().flatten()  # an example's eos, then the next one's prefix (eos)
    assert len(boundaries) >= 1 and (targets[0, boundaries] == IGNORE_INDEX).all()
    assert (targets[0, boundaries + 1] != IGNORE_INDEX).all()  # the next example's prompt is trained on


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


@pytest.mark.parametrize("packing", [False, True])
def test_order_is_seeded_and_a_resume_continues_exactly(tokenizer, packing):
    encoded = encode_examples(tokenizer, records(30), "plain", 64)
    make = lambda **kw: InstructionBatches(encoded, 2, 64, packing=packing, **kw)  # noqa: E731
    first = make(seed=1)
    per_epoch = len(first)
    run = take(iter(first), 3 * per_epoch + 1)  # across epoch boundaries
    assert same(run, take(iter(make(seed=1)), len(run)))
    assert not same(run, take(iter(make(seed=2)), len(run)))
    assert not same(run[:per_epoch], run[per_epoch : 2 * per_epoch])  # each epoch its own order

    for stop in (1, per_epoch, per_epoch + 2):
        interrupted = make(seed=1)
        iterator = iter(interrupted)
        take(iterator, stop)
        state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint keeps it
        resumed = make(seed=1)
        resumed.load_state_dict(state)
        assert same(take(iter(resumed), len(run) - stop), run[stop:])
    with pytest.raises(UserError, match="another seed"):
        make(seed=3).load_state_dict(state)
    other = InstructionBatches(encoded[1:], 2, 64, packing=packing, seed=1)
    with pytest.raises(UserError, match="other examples or encoding"):
        other.load_state_dict(state)


def test_two_ranks_split_each_global_batch_and_resume_exactly(tokenizer):
    encoded = encode_examples(tokenizer, records(30), "plain", 64)
    single = InstructionBatches(encoded, 4, 64, padding="max_seq_length", seed=5)  # one process, 4 rows
    ranks = [InstructionBatches(encoded, 2, 64, padding="max_seq_length", seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 7
    n = 2 * len(single) + 3
    whole = take(iter(single), n)
    halves = [take(iter(r), n) for r in ranks]
    for step, (inputs, targets) in enumerate(whole):  # rank 0 the first two rows of each global batch, rank 1 the rest
        assert torch.equal(inputs, torch.cat([halves[0][step][0], halves[1][step][0]]))
        assert torch.equal(targets, torch.cat([halves[0][step][1], halves[1][step][1]]))
    # both ranks stopped after 9 micro-batches; resumed, each continues with its own next ones
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict() and state["epoch"] == 2
    for r in (0, 1):
        fresh = InstructionBatches(encoded, 2, 64, padding="max_seq_length", seed=5, rank=r, world_size=2)
        fresh.load_state_dict(state)
        more = take(iter(ranks[r]), 4)
        assert same(take(iter(fresh), 4), more)
    # the same position on one process with the same global batch continues the same rows
    alone = InstructionBatches(encoded, 4, 64, padding="max_seq_length", seed=5)
    alone.load_state_dict(state)
    after = take(iter(single), 4)
    assert same(take(iter(alone), 4), after)
    odd = InstructionBatches(encoded, 5, 64, padding="max_seq_length", seed=5)
    with pytest.raises(UserError, match="do not divide"):
        odd.load_state_dict(state)
    with pytest.raises(UserError, match="make no whole micro-batch of 16 rows on each of 2 processes"):
        InstructionBatches(encoded, 16, 64, world_size=2)


def test_split_is_deterministic():
    examples = records(50)
    train, val = split_instructions(examples, val_fraction=0.1, seed=7)
    assert len(val) == 5 and len(train) == 45 and sorted(map(str, train + val)) == sorted(map(str, examples))
    assert (train, val) == split_instructions(examples, val_fraction=0.1, seed=7)
    assert [e for e in examples if e in val] == val  # each side in the records' order
    # the same held-out records whatever the order of the files
    assert sorted(map(str, split_instructions(examples[::-1], val_fraction=0.1, seed=7)[1])) == sorted(map(str, val))
    assert split_instructions(examples, val_fraction=0.1, seed=8)[1] != val
    assert len(split_instructions(examples, val_size=3, seed=7)[1]) == 3
    with pytest.raises(UserError, match="--val_fraction 0.01 of 50 examples holds out none"):
        split_instructions(examples, val_fraction=0.01)


@pytest.fixture(scope="module")
def tiny_checkpoint(export_tokenizer_dir, tmp_path_factory) -> Path:
    """A lit checkpoint directory of a one-layer test-llama with random weights and the test tokenizer."""
    import shutil

    from conftest import TEST_LLAMA

    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.weights import save_lit_checkpoint

    out = tmp_path_factory.mktemp("tiny-lit")
    config = Config(**{**TEST_LLAMA, "n_layer": 1})
    torch.manual_seed(0)
    save_lit_checkpoint(GPT(config).state_dict(), config, out)
    shutil.copy(export_tokenizer_dir / "tokenizer.model", out)
    return out


def test_generate_with_template_prompts_as_finetuning_encodes(tiny_checkpoint, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    prompts, real_generate = [], script.generate

    def spy(model, prompt, *args, **kwargs):
        prompts.append(prompt.tolist())
        return real_generate(model, prompt, *args, **kwargs)

    monkeypatch.setattr(script, "generate", spy)
    script.main(tiny_checkpoint, prompt="What is the code of X?", input="the list", template="alpaca",
                max_new_tokens=12, temperature=0.0)  # fmt: skip
    tokenizer = Tokenizer(tiny_checkpoint)
    example = {"instruction": "What is the code of X?", "input": "the list", "output": "Y"}
    ids, labels = encode_example(tokenizer, example, "alpaca", 256)
    expected = ids[labels == IGNORE_INDEX].tolist()  # the prompt's ids as finetuning encodes them
    assert prompts == [expected]
    model = script.load_model(script.L.Fabric(devices=1, accelerator="cpu"), tiny_checkpoint)
    response = real_generate(model, torch.tensor(expected, dtype=torch.int32), 12, temperature=0.0)[len(expected) :]
    assert capsys.readouterr().out == tokenizer.decode(response) + "\n"  # the response alone
    with pytest.raises(ValueError, match="--input is the input of an instruction in --template; give --template"):
        script.main(tiny_checkpoint, input="the list")


def test_validation_batches_give_every_rank_as_many(tokenizer):
    encoded = encode_examples(tokenizer, records(7), "plain", 64)
    ranks = [validation_batches(encoded, 2, 64, rank=r, world_size=2) for r in (0, 1)]
    assert [[len(x) for x, _ in batches] for batches in ranks] == [[2, 1], [2, 1]]  # 3 rows each, the 7th left out
    rows = [inputs[i] for batches in ranks for inputs, _ in batches for i in range(len(inputs))]
    for row, (x, _) in zip(rows, encoded[:6]):
        assert row[: len(x) - 1].tolist() == x[:-1].tolist()
    assert [len(x) for x, _ in validation_batches(encoded, 4, 64)] == [4, 3]  # one process: every example
    with pytest.raises(UserError, match="1 held-out examples are fewer than the 2 processes"):
        validation_batches(encoded[:1], 2, 64, world_size=2)


def test_the_tutorial_shows_the_templates_as_they_are():
    text = (ROOT / "tutorials" / "finetune_lora.md").read_text(encoding="utf-8")
    shown = dict(re.findall(r"<!-- template: alpaca, (with|without) input -->\n```text\n(.*?)```", text, re.S))
    assert shown["with"] == apply_template("alpaca", "Translate to French.", "The cat sleeps.")
    assert shown["without"] == apply_template("alpaca", "Name the capital of France.")


def test_unreadable_files_and_empty_data_are_named(tmp_path):
    (tmp_path / "good.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match=r"gone.jsonl cannot be read \(a link to no file\).*--skip_bad_records true"):
        load_instructions(tmp_path)
    problems = []
    assert len(load_instructions(tmp_path, skip_bad_records=True, problems=problems)) == 1
    assert [(Path(p.path).name, p.reason) for p in problems] == [("gone.jsonl", "a link to no file")]
    (tmp_path / "good.jsonl").write_text('{"question": "a", "output": "b"}\n')
    with pytest.raises(UserError, match="holds no record with strings under 'instruction' and 'output'; name the keys"):
        load_instructions(tmp_path / "good.jsonl", skip_bad_records=True)


def test_the_models_loss_is_the_response_tokens_alone(tokenizer):
    from conftest import TEST_LLAMA

    from lit_gpt.config import Config
    from lit_gpt.model import GPT

    torch.manual_seed(0)
    model = GPT(Config(**{**TEST_LLAMA, "n_layer": 1}))
    encoded = encode_examples(tokenizer, records(3), "plain", 64)
    inputs, targets = InstructionBatches(encoded, 3, 64, shuffle=False).epoch_batches()[0]
    with torch.no_grad():
        logits = model(inputs)
        loss = model(inputs, targets=targets)
    # the mean cross-entropy of predicting each response token (and eos) of each example from what precedes it
    expected = []
    for row, (ids, labels) in enumerate(encoded):
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                expected.append(torch.nn.functional.cross_entropy(logits[row, t - 1], ids[t]))
    n_response = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in encoded)
    assert len(expected) == n_response
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_an_unpaired_surrogate_escape_is_a_bad_record(tmp_path):
    """`"\\ud800"` is valid JSON but no character: it used to pass as a record and stop the run with a traceback
    (UnicodeEncodeError) in the held-out split's hash, or the tokenizer's."""
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "\\ud800 c", "output": "d"}\n')
    with pytest.raises(UserError, match=r"data.jsonl:2: 'instruction' holds an unpaired surrogate escape \\ud800"):
        load_instructions(path)
    kept = load_instructions(path, skip_bad_records=True)
    assert kept == [{"instruction": "a", "input": "", "output": "b"}]
    split_instructions(kept * 20, val_fraction=0.1)  # what the scripts do next: no error


def test_generate_refuses_a_prompt_that_fills_the_window_or_is_not_utf8(tiny_checkpoint):
    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    message = "exceed the model's block size 256; shorten the prompt to fewer than 256 tokens$"
    with pytest.raises(ValueError, match=message) as e:
        script.main(tiny_checkpoint, prompt="word " * 400, template="plain", max_new_tokens=5, temperature=0.0)
    assert "-" not in re.sub(r"--\w+", "", str(e.value))  # it used to suggest --max_new_tokens -947
    with pytest.raises(ValueError, match="--prompt holds bytes that are not UTF-8 text"):
        script.main(tiny_checkpoint, prompt=b"caf\xe9".decode("utf-8", "surrogateescape"), template="plain")


def test_a_val_fraction_that_holds_out_every_record_names_the_flag():
    """It used to name --val_size, which the scripts do not have."""
    with pytest.raises(UserError, match="--val_fraction 0.98 of 20 examples holds out all 20, leaving none to train"):
        split_instructions(records(20), val_fraction=0.98)


def test_a_stray_byte_in_a_json_array_loses_its_record_alone(tmp_path):
    """A byte that is not UTF-8 (a Latin-1 é) in one element of an array used to fail the decoding of the whole
    file: with --skip_bad_records every record of it was left out, under a warning of 1 bad record whose "rest of file
    unread" said the records before it were kept."""
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    text = json.dumps(rows, indent=1).encode()
    at = text.index(b'"q3"')
    (tmp_path / "data.json").write_bytes(text[:at] + b'"caf\xe9 ' + text[at + 1 :])
    line = text[:at].count(b"\n") + 1
    with pytest.raises(UserError, match=rf"^1 bad instruction records: \S+data.json:{line - 1}: not UTF-8 text: byte "
                       rf"0xe9 on line {line}\. Fix them"):  # fmt: skip
        load_instructions(tmp_path / "data.json")
    kept = load_instructions(tmp_path / "data.json", skip_bad_records=True)
    assert [r["instruction"] for r in kept] == ["q0", "q1", "q2", "q4", "q5"]


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_a_utf16_file_is_named_as_such(tmp_path, name):
    """Windows PowerShell's `>` writes UTF-16: it used to give a bad record per line, in codec and JSON jargon."""
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    text = json.dumps(rows) if name.endswith(".json") else "\n".join(json.dumps(r) for r in rows)
    (tmp_path / name).write_text(text, encoding="utf-16")
    with pytest.raises(UserError, match=rf"^1 bad instruction records: \S+{name}:1: UTF-16 text, not UTF-8 .*save it "
                       "as UTF-8"):  # fmt: skip
        load_instructions(tmp_path / name)


@pytest.mark.parametrize("content", ["", "\n\n", "[]", " [ ] \n"])
def test_an_empty_file_is_called_empty(tmp_path, content):
    """It used to be told to name the keys its records use (--instruction_key), as if it held records."""
    (tmp_path / "data.json").write_text(content)
    with pytest.raises(UserError, match=r"holds no record: its JSON files are empty \(or hold an empty array\)"):
        load_instructions(tmp_path / "data.json")


def test_generate_with_template_reads_a_special_tokens_spelling_as_finetuning_did(tmp_path, monkeypatch):
    """An instruction quoting the eos of a `tokenizer.json` tokenizer ("<|end_of_text|>") was text in the examples
    finetuning trained on; `generate/base.py --template` gives the model the same ids, not the eos id."""
    from conftest import TEST_LLAMA
    from prepared_data import load_script

    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.weights import save_lit_checkpoint

    out = tmp_path / "tiny"
    corpus = Path(__file__).parent / "tokenizer_corpus.txt"
    load_script("train_tokenizer").train(input=str(corpus), output_dir=out, vocab_size=600, kind="bpe")
    config = Config(**{**TEST_LLAMA, "n_layer": 1, "vocab_size": 640})
    torch.manual_seed(0)
    save_lit_checkpoint(GPT(config).state_dict(), config, out)
    spec = importlib.util.spec_from_file_location("generate_base", ROOT / "generate" / "base.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    prompts = []
    monkeypatch.setattr(script, "generate", lambda model, p, *a, **k: prompts.append(p.tolist()) or p)
    instruction = "What does <|end_of_text|> mean?"
    script.main(out, prompt=instruction, template="alpaca", max_new_tokens=1, temperature=0.0)
    tokenizer = Tokenizer(out)
    ids, labels = encode_example(tokenizer, {"instruction": instruction, "input": "", "output": "Y"}, "alpaca", 256)
    expected = ids[labels == IGNORE_INDEX].tolist()  # the prompt's ids as finetuning encodes them
    assert expected.count(tokenizer.eos_id) == 1  # the prefix alone (documents ended with eos), not the quote
    assert prompts == [expected]
