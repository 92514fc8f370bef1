import os
import shutil
import sys
import tempfile
from pathlib import Path

# compiled kernels go to a cache of this run (the tests and the scripts they start), not /tmp/torchinductor_<user>:
# a kernel that another run wrote there (concurrently, or under another CPU capability) aborted the suite inside it
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lit-gpt-tests-inductor-")
else:
    INDUCTOR_CACHE = None  # the caller's own

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# entry points import `lit_gpt` from the checkout, tests do the same
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _litdata_cache(tmp_path, monkeypatch):
    # litdata writes its caches under the home directory unless told otherwise
    monkeypatch.setenv("DATA_OPTIMIZER_CACHE_FOLDER", str(tmp_path / "litdata-cache"))
    monkeypatch.setenv("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(tmp_path / "litdata-data-cache"))


@pytest.fixture(autouse=True)
def _no_distributed_leftovers():
    """A test that runs a script's setup() in-process makes this process a 1-process group through Fabric, which sets
    MASTER_PORT, LOCAL_RANK, ... and holds a port: release the group and drop the variables after every test, or the
    later tests' subprocesses inherit them (taking themselves for launched ranks, or binding the port: EADDRINUSE)."""
    saved = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


# entry points that import an optional extra: their parametrized command-line tests need it (CI installs it)
NEEDS_EXTRA = {"eval/harness.py": "lm_eval"}


def pytest_collection_modifyitems(config, items):
    import importlib.util

    for script, package in NEEDS_EXTRA.items():
        if importlib.util.find_spec(package) is None:
            skip = pytest.mark.skip(reason=f"{script} needs {package}: `pip install -e '.[eval]'` (install.sh does)")
            for item in items:
                if script in item.name:
                    item.add_marker(skip)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Prepared sample data, built once per test session by the real scripts (tests/prepared_data.py): the paths of the
    raw corpus, the tokenizer and the litdata chunks of slimpajama/{train,val} and starcoder. Read-only for tests."""
    from prepared_data import build_prepared_data

    return build_prepared_data(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def data_dir(prepared):
    """The folder that holds slimpajama/{train,val} and starcoder, as `--data_dir` takes it."""
    return prepared["slimpajama_train"].parents[1]


########################
# Checkpoint export fixtures (tests/test_convert.py, test_generate.py, test_eval_perplexity.py)
########################
# micro-llama's architecture with a 512-token vocabulary, which the test tokenizer fills exactly
TEST_LLAMA = dict(name="test-llama", block_size=256, vocab_size=512, padding_multiple=64, n_layer=4, n_head=4)
TEST_LLAMA.update(n_embd=128, rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm")
TEST_LLAMA.update(norm_eps=1e-5, mlp_class_name="LLaMAMLP", intermediate_size=352, n_query_groups=2)

# Trains `test-llama` for two optimizer steps with Lightning Fabric's ModelParallelStrategy (FSDP2 over gloo, with
# activation checkpointing so that wrapper names appear) and saves it with `fabric.save`, as pretraining does.
FABRIC_SCRIPT = """
import sys
from pathlib import Path

import torch

sys.path.insert(0, {root!r})
from lit_gpt.training.fabric import L, ModelParallelStrategy
from lit_gpt.config import Config
from lit_gpt.model import GPT, init_weights
from lit_gpt.training.parallel import make_parallelize_fn

out, devices, sharded = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "sharded"
strategy = ModelParallelStrategy(
    parallelize_fn=make_parallelize_fn(precision="32-true", activation_checkpointing=True),
    data_parallel_size=devices, tensor_parallel_size=1, save_distributed_checkpoint=sharded,
)
fabric = L.Fabric(accelerator="cpu", devices=devices, strategy=strategy)
fabric.launch()
torch.manual_seed(0)  # same seed and same batch on every rank: one process and two compute the same weights
config = Config(**{config!r})
model = GPT(config)
init_weights(model, config.n_layer, config.n_embd)
model = fabric.setup(model)
optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
data = torch.randint(0, config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(1))
for step in range(2):
    logits = model(data[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
    fabric.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
fabric.save(out / "step-00000002.pth", {{"model": model, "optimizer": optimizer, "step_count": 2, "iter_num": 2}})
"""


def _run_fabric(tmp: Path, devices: int, kind: str) -> Path:
    import subprocess

    out = tmp / f"{kind}-{devices}"
    out.mkdir()
    script = tmp / "train.py"
    script.write_text(FABRIC_SCRIPT.format(root=str(ROOT), config=TEST_LLAMA))
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(devices), kind], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "step-00000002.pth"


@pytest.fixture
def register_test_llama(monkeypatch):
    """`test-llama` in the config registry, for `--config_name` / `--model_name`."""
    from lit_gpt.config import name_to_config

    monkeypatch.setitem(name_to_config, "test-llama", TEST_LLAMA)


@pytest.fixture(scope="session")
def export_tokenizer_dir(tmp_path_factory) -> Path:
    """A real 512-token SentencePiece model, trained as scripts/train_tokenizer.py does (identity normalization)."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("tokenizer")
    # a fixed text (the library's source as it was when the suite's token counts were set), so that editing the
    # library does not move the tokenizer, and with it the counts that tests of packing and truncation rely on
    text = (ROOT / "tests" / "tokenizer_corpus.txt").read_text()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=TEST_LLAMA["vocab_size"],
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    return out


@pytest.fixture(scope="session")
def fabric_checkpoints(tmp_path_factory) -> dict:
    """`step-00000002.pth` of a one-process Fabric run (a single file); test_convert.py also converts sharded
    checkpoints of pretrain/tinyllama.py itself."""
    tmp = tmp_path_factory.mktemp("fabric")
    return {"single": _run_fabric(tmp, 1, "single")}


@pytest.fixture(scope="session")
def export_lit_dir(fabric_checkpoints, export_tokenizer_dir, tmp_path_factory) -> Path:
    from lit_gpt.config import name_to_config
    from scripts.convert_pretrained_checkpoint import convert

    out = tmp_path_factory.mktemp("lit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(name_to_config, "test-llama", TEST_LLAMA)
        convert(fabric_checkpoints["single"], export_tokenizer_dir, "test-llama", out, overwrite=True)
    return out


@pytest.fixture(scope="session")
def export_hf_dir(export_lit_dir, tmp_path_factory) -> Path:
    from scripts.convert_lit_checkpoint import convert

    out = tmp_path_factory.mktemp("hf") / "hf-test-llama"
    convert(export_lit_dir, out, max_shard_size="1MB")  # small shards: exercise the index
    return out


# Encodes texts with transformers' AutoTokenizer in a process where sentencepiece and protobuf cannot be imported, as
# on a machine with only torch and transformers installed.
PLAIN_TRANSFORMERS_SCRIPT = """
import json, sys
for name in ("sentencepiece", "google", "google.protobuf", "tiktoken"):
    sys.modules[name] = None  # `import name` raises ImportError, find_spec says it is not installed
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(sys.stdin)
ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
print(json.dumps({
    "ids": ids,
    "with_special_tokens": [tokenizer.encode(t) for t in texts],
    "decoded": [tokenizer.decode(i) for i in ids],
    "model_max_length": tokenizer.model_max_length,
    "bos_token_id": tokenizer.bos_token_id,
    "eos_token_id": tokenizer.eos_token_id,
}))
"""


@pytest.fixture
def plain_transformers_encode():
    """`encode(directory, texts)`: ids (without and with special tokens), decoded texts, `model_max_length` and
    bos/eos ids of `AutoTokenizer.from_pretrained(directory)` in a Python without sentencepiece and protobuf."""
    import json
    import subprocess

    def encode(directory: Path, texts: list) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", PLAIN_TRANSFORMERS_SCRIPT, str(directory)],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])

    return encode


########################
# Pretraining runs shared by tests/test_pretrain.py and test_convert.py
########################
@pytest.fixture(scope="session")
def pretrain_runs(tmp_path_factory) -> dict:
    """Uninterrupted runs of pretrain/tinyllama.py with test_pretrain.py's COMMON flags and SHARDED_FLAGS (3 steps,
    checkpoints of steps 2 and 3) on its identical samples: the data dir (`data`) and the out dirs of one process
    (`one`, single-file checkpoints) and of two (`two`, sharded). Read-only for tests: copy what a test changes."""
    from test_pretrain import SHARDED_FLAGS, _build, finish, run, same_tokens, start

    root = tmp_path_factory.mktemp("pretrain-runs")
    runs = {"data": _build(root / "data", same_tokens, 40), "one": root / "one", "two": root / "two"}
    one = start(runs["one"], runs["data"], *SHARDED_FLAGS)  # the two runs at once
    run(runs["two"], runs["data"], *SHARDED_FLAGS, devices=2)
    finish(one)
    return runs


def pytest_sessionfinish(session, exitstatus):
    if INDUCTOR_CACHE is not None:
        shutil.rmtree(INDUCTOR_CACHE, ignore_errors=True)
