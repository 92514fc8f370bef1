import json
import os
from pathlib import Path

import pytest
import torch

from lit_gpt.tokenizer import Tokenizer

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pretraining a language model needs a tokenizer.\n"
    "def add(a, b):\n    return a + b\n"
) * 50


def train_sentencepiece(directory, vocab_size=400):
    import sentencepiece as spm

    (directory / "corpus.txt").write_text(TEXT)
    spm.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )


def test_sentencepiece_tokenizer(tmp_path):
    train_sentencepiece(tmp_path)
    tok = Tokenizer(tmp_path)
    assert tok.backend == "sentencepiece"
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.vocab_size == 400
    ids = tok.encode("The lazy fox", bos=True, eos=True)
    assert ids.dtype == torch.int32
    assert ids[0].item() == 1 and ids[-1].item() == 2
    assert tok.decode(ids) == "The lazy fox"
    # byte fallback: characters the corpus never had still round-trip
    assert tok.decode(tok.encode("Zürich ☃")) == "Zürich ☃"
    assert tok.encode_batch(["a b", "The"], eos=True) == [tok.encode_ids("a b") + [2], tok.encode_ids("The") + [2]]


def test_add_bos_token_and_generation_config_are_read(tmp_path):
    train_sentencepiece(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    # generation_config.json's ids win over tokenizer.model's (bos 1, eos 2)
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 3, "eos_token_id": [2, 0]}))
    tok = Tokenizer(tmp_path)
    assert tok.add_bos_token and (tok.bos_id, tok.eos_id) == (3, 2)
    assert tok.encode("fox", bos=None)[0].item() == 3
    # the library's own encoding says bos itself; `encode` is lit-gpt's, whose default follows the config
    assert tok.encode_ids("fox")[0] != 3 and tok.encode("fox")[0].item() == 3


def test_encode_is_lit_gpts(tmp_path):
    """`encode(string, device, bos, eos, max_length)` as lit-gpt (February 2024) has it: positional device, bos by
    default where the tokenizer config asks for it (or is a Llama tokenizer's that does not say), max_length cuts."""
    train_sentencepiece(tmp_path)
    plain = Tokenizer(tmp_path).encode_ids("The lazy fox")
    for config, use_bos in (
        ({}, False),
        ({"add_bos_token": False, "tokenizer_class": "LlamaTokenizer"}, False),
        ({"add_bos_token": True}, True),
        ({"tokenizer_class": "LlamaTokenizer"}, True),
        ({"add_prefix_space": True}, True),
    ):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        tok = Tokenizer(tmp_path)
        assert tok.encode("The lazy fox", None).tolist() == [1] * use_bos + plain, config
        assert tok.encode("The lazy fox", torch.device("cpu"), False, True).tolist() == plain + [2]
        assert tok.encode("The lazy fox", bos=True, max_length=2).tolist() == [1, plain[0]]
        assert tok.encode_ids("The lazy fox") == plain  # the library's encoding is not changed by the config


def test_huggingface_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    # as in Llama's tokenizer.json: the post-processor adds <s>, which `bos` (not the backend) decides here
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": False})
    )
    tok = Tokenizer(tmp_path)
    assert tok.backend == "huggingface"
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("quick brown", bos=True, eos=True)
    assert ids[0].item() == 1 and ids[1].item() != 1 and ids[-1].item() == 2
    assert tok.encode_ids("quick brown") == ids[1:-1].tolist()
    assert tok.decode(ids[1:-1]).strip() == "quick brown"


def test_missing_tokenizer_names_the_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model.*tokenizer.json") as e:
        Tokenizer(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(NotADirectoryError, match="download.py"):
        Tokenizer(tmp_path / "nope")


def test_unreadable_tokenizer_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="not a readable SentencePiece model"):
        Tokenizer(tmp_path)


# what SentencePiece and a converted tokenizer are most likely to disagree on: runs of spaces at the start, inside and
# at the end, newlines and tabs, digits, characters the corpus never had (byte fallback), the special tokens as text
EDGE_TEXTS = [
    "  two",
    " two",
    "two  ",
    "a  b   c    d",
    "\n",
    "\n\n  x\n",
    "\t\tdef f():\n\t\treturn 1",
    "",
    " ",
    "   ",
]
EDGE_TEXTS += ["3.14159 + 2024", "Über naïve café, 東京 🙂", "\u00a0\u3000ﬁ", "<s>x</s>", "<unk>", "<0x41>", "▁▁a"]


def _edge_and_random_texts(n: int = 500) -> list:
    import random

    rng = random.Random(0)
    alphabet = "  \n\tae_(){}0123456789éü東🙂"
    return EDGE_TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def test_tokenizer_json_encodes_like_sentencepiece(prepared):
    """The tokenizer.json built from the sample tokenizer (scripts/train_tokenizer.py: BPE, byte fallback, identity
    normalization) gives SentencePiece's ids and texts on the documents of the sample corpus and on edge cases."""
    from sentencepiece import SentencePieceProcessor

    from lit_gpt.data.readers import iter_texts
    from lit_gpt.tokenizer import sentencepiece_to_tokenizers

    sp = SentencePieceProcessor(model_file=str(prepared["tokenizer"] / "tokenizer.model"))
    fast = sentencepiece_to_tokenizers(prepared["tokenizer"] / "tokenizer.model")
    fast.encode_special_tokens = True  # what `split_special_tokens` in tokenizer_config.json does in transformers
    texts = list(iter_texts(prepared["raw"])) + _edge_and_random_texts()
    assert len(texts) > 800
    for text in texts:
        ids = sp.encode(text)
        assert fast.encode(text, add_special_tokens=False).ids == ids, (text[:80], sp.encode(text, out_type=str)[:20])
        assert fast.decode(ids) == sp.decode(ids), text[:80]
    # the case transformers' LlamaTokenizer gets wrong (`▁▁ t w o`): the dummy prefix joins the word
    assert sp.encode("  two", out_type=str)[:2] == ["▁▁", "▁t"]


def test_tokenizer_files_load_with_transformers_alone(prepared, tmp_path, plain_transformers_encode):
    """The tokenizer files written for a checkpoint load with AutoTokenizer where sentencepiece and protobuf cannot
    be imported, encode and decode as lit's Tokenizer (bos from add_bos_token), and take the model's context length
    (train_tokenizer.py's tokenizer_config.json says 2048)."""
    from lit_gpt.convert import save_tokenizer_files
    from lit_gpt.data.readers import iter_texts

    written = save_tokenizer_files(prepared["tokenizer"], tmp_path, block_size=256)
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(written)
    texts = [t for i, t in enumerate(iter_texts(prepared["raw"])) if i % 10 == 0] + _edge_and_random_texts(100)
    theirs = plain_transformers_encode(tmp_path, texts)
    ours = Tokenizer(prepared["tokenizer"])
    assert ours.add_bos_token
    assert theirs["ids"] == [ours.encode_ids(t) for t in texts]
    assert theirs["with_special_tokens"] == [ours.encode_ids(t, bos=None) for t in texts]
    assert theirs["decoded"] == [ours.decode(ours.encode_ids(t)) for t in texts]
    assert theirs["model_max_length"] == 256
    assert (theirs["bos_token_id"], theirs["eos_token_id"]) == (ours.bos_id, ours.eos_id) == (1, 2)


def test_unigram_tokenizer_json_encodes_like_sentencepiece(tmp_path):
    """The Unigram path, on text without the spelled-out special pieces it cannot tell from text (see
    `sentencepiece_to_tokenizers`)."""
    import sentencepiece as spm

    from lit_gpt.tokenizer import sentencepiece_to_tokenizers

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_prefix=str(tmp_path / "unigram"),
        model_type="unigram",
        vocab_size=300,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "unigram.model"))
    fast = sentencepiece_to_tokenizers(tmp_path / "unigram.model")
    texts = [t for t in _edge_and_random_texts() if "<" not in t] + TEXT.splitlines()[:3] + ["The  lazy fox\n"]
    for text in texts:
        assert fast.encode(text, add_special_tokens=False).ids == sp.encode(text), text
        assert fast.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text


def test_tokenizer_json_decodes_unknown_pieces_like_sentencepiece(tmp_path):
    """A model without byte fallback encodes a character it does not know (an emoji, a control character) as its
    unknown piece, which SentencePiece decodes as its `unk_surface` (" ⁇ "): so does the tokenizer.json."""
    import sentencepiece as spm

    from lit_gpt.tokenizer import sentencepiece_to_tokenizers

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_prefix=str(tmp_path / "nofallback"),
        model_type="bpe",
        vocab_size=200,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "nofallback.model"))
    fast = sentencepiece_to_tokenizers(tmp_path / "nofallback.model")
    for text in ["🙂", "a🙂b", "The \x00 fox", "🙂🙂 ok"]:
        ids = sp.encode(text)
        assert 0 in ids and fast.encode(text, add_special_tokens=False).ids == ids, text
        assert fast.decode(ids, skip_special_tokens=False) == sp.decode(ids), text  # transformers' default


@pytest.mark.parametrize("config", [{"eos_token_id": "x"}, {"bos_token_id": 1.5}, {"eos_token_id": [True]}])
def test_an_id_that_is_not_a_whole_number_is_refused_at_load(tmp_path, config):
    """`"eos_token_id": "x"` loaded, and a preparation's worker failed with a TypeError when it appended it."""
    train_sentencepiece(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    name = next(iter(config))
    with pytest.raises(ValueError, match=f"generation_config.json says {name} .*, which is not a token id") as e:
        Tokenizer(tmp_path)
    assert "\n" not in str(e.value)


# texts that a byte-level BPE must give back exactly: scripts and emoji it never saw, combining marks, joiners,
# control characters, a BOM, \r\n, runs of spaces and digits
UNICODE_TEXTS = [
    "naïve café — 東京都の天気は晴れ。 Ελληνικά, русский, עברית، العربية",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, e\u0301 (combining), \u200bzero\u200dwidth, \ufeffBOM",
    "\x00\x01\x7f\tcontrol\r\nwindows\rmac\n\n\n   three spaces\u00a0nbsp\u3000ideographic space",
    "1234567890 3.14159 -42 1e-5 0x1F 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛 \U0010ffff \ue000 private use",
    "",
    " ",
    "def f(x):\n\treturn x ** 2  # ✓\n",
]


def test_byte_level_bpe_trains_round_trips_unicode_prepares_and_pretrains(tmp_path):
    """`train_tokenizer.py --kind bpe`: a `tokenizer.json`-only tokenizer (no SentencePiece model) whose bos/eos come
    from the tokenizer_config.json it writes; any text encodes and decodes back exactly; preparation records its eos,
    and pretraining trains on the prepared tokens."""
    import subprocess
    import sys

    from prepared_data import load_script
    from test_pretrain import BLOCK, metrics, run

    from lit_gpt.data.prepare import prepare
    from lit_gpt.data.readers import PrepareError, TextOptions

    corpus = Path(__file__).parent / "tokenizer_corpus.txt"
    out = tmp_path / "bpe"
    load_script("train_tokenizer").train(input=str(corpus), output_dir=out, vocab_size=1000, kind="bpe")
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tokenizer = Tokenizer(out)
    assert tokenizer.backend == "huggingface" and tokenizer.vocab_size == 1000
    assert (tokenizer.bos_id, tokenizer.eos_id) == (0, 1)
    assert tokenizer.token_to_id("<|end_of_text|>") == 1
    for text in UNICODE_TEXTS:
        ids = tokenizer.encode_ids(text)
        assert all(0 <= i < 1000 for i in ids)
        assert tokenizer.decode(ids) == text, text
    # the merges are learned: common words of the corpus are one token; digits are split in groups of at most 3
    assert len(tokenizer.encode_ids(" return")) == 1
    split = tokenizer.processor.pre_tokenizer.pre_tokenize_str("x=1234567")
    assert [piece for piece, _ in split] == ["x", "=", "123", "456", "7"]
    # transformers reads the same files and encodes the same ids
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs.encode(UNICODE_TEXTS[0], add_special_tokens=False) == tokenizer.encode_ids(UNICODE_TEXTS[0])
    assert (theirs.bos_token_id, theirs.eos_token_id) == (0, 1)

    # prepared with it, each document followed by its eos; a few pretraining steps on the tokens
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(UNICODE_TEXTS * 2 + [corpus.read_text()[:40_000]]):
        (tmp_path / "docs" / f"{i}.txt").write_text(text)
    stats = prepare("text", None, str(tmp_path / "tokens"), out, (BLOCK + 1) * 8, num_workers=1, verbose=False,
                    inputs=[str(tmp_path / "docs")], text_options=TextOptions())  # fmt: skip
    from litdata.streaming import StreamingDataset, TokensLoader

    dataset = StreamingDataset(str(tmp_path / "tokens"), item_loader=TokensLoader(block_size=1))
    stream = [int(dataset[i]) for i in range(len(dataset))]
    assert len(stream) == stats.tokens and stream.count(1) == stats.documents > len(UNICODE_TEXTS)
    documents, start = [], 0
    for i, token in enumerate(stream):
        if token == 1:
            documents.append(tokenizer.decode(stream[start:i]))
            start = i + 1
    written = {(tmp_path / "docs" / f).read_bytes().decode() for f in os.listdir(tmp_path / "docs")}
    assert set(documents) <= written and UNICODE_TEXTS[0] in documents and UNICODE_TEXTS[1] in documents
    recorded = json.loads((tmp_path / "tokens" / "prepare.json").read_text())
    assert recorded["separators"] == {"bos": False, "eos": True} and recorded["eos_id"] == 1
    flags = ["--train_data", f"{{{tmp_path / 'tokens'}: 1}}", "--val_data", str(tmp_path / "tokens"),
             "--max_steps", "3", "--eval_interval", "3", "--save_interval", "3"]  # fmt: skip
    run(tmp_path / "out", tmp_path / "no-data-dir", *flags)
    losses = metrics(tmp_path / "out")
    assert sorted(losses) == [1, 2, 3] and losses[3] < losses[1]
    with pytest.raises(PrepareError, match="bpe/tokenizer.json exists; pass --overwrite true"):
        load_script("train_tokenizer").train(input=str(corpus), output_dir=out, vocab_size=1000, kind="bpe")
    # the script's own command line takes --kind
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "scripts" / "train_tokenizer.py"), "--input", str(corpus),
         "--output_dir", str(tmp_path / "small"), "--kind", "bpe", "--vocab_size", "258"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: --vocab_size 258 is too small" in proc.stderr, proc.stderr


def test_a_special_tokens_spelling_in_training_text_is_text_and_in_a_prompt_the_token(tmp_path):
    """A document that quotes the eos of a `tokenizer.json` tokenizer ("<|end_of_text|>" in a web page about Llama 3)
    is prepared as text: the eos id stands only at the documents' ends, where the document mask cuts. A prompt to
    generate from, the harness and `encode` read the spelling as the token, as transformers does."""
    from prepared_data import load_script

    from lit_gpt.data.prepare import prepare
    from lit_gpt.data.readers import TextOptions
    from lit_gpt.data.separators import DEFAULT_SEPARATORS, encode_prompt

    corpus = Path(__file__).parent / "tokenizer_corpus.txt"
    out = tmp_path / "bpe"
    load_script("train_tokenizer").train(input=str(corpus), output_dir=out, vocab_size=600, kind="bpe")
    tokenizer = Tokenizer(out)
    eos = tokenizer.eos_id
    quoting = "Llama 3 ends a document with <|end_of_text|> and begins one with <|begin_of_text|>."
    ids = tokenizer.encode_ids(quoting)
    assert eos not in ids and tokenizer.bos_id not in ids
    assert tokenizer.decode(ids) == quoting
    assert eos in tokenizer.encode_ids(quoting, parse_special=True)
    assert eos in tokenizer.encode(quoting).tolist()
    assert eos in encode_prompt(tokenizer, quoting, DEFAULT_SEPARATORS)
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs.encode(quoting, add_special_tokens=False) == tokenizer.encode_ids(quoting, parse_special=True)

    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"{i}: {quoting}")
    stats = prepare("text", None, str(tmp_path / "tokens"), out, 64, num_workers=1, verbose=False,
                    inputs=[str(tmp_path / "docs")], text_options=TextOptions())  # fmt: skip
    from litdata.streaming import StreamingDataset, TokensLoader

    dataset = StreamingDataset(str(tmp_path / "tokens"), item_loader=TokensLoader(block_size=1))
    stream = [int(dataset[i]) for i in range(len(dataset))]
    assert stats.documents == 3 and stream.count(eos) == 3 and stream[-1] == eos
