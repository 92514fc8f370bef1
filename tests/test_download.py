"""scripts/download.py against a local stand-in for the Hugging Face Hub: an HTTP server on 127.0.0.1 that speaks the
endpoints huggingface_hub calls (repo info, tree listing, file resolve), reached through HF_ENDPOINT. huggingface_hub
itself runs unmodified, in a subprocess, as a user would run the script."""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_stand_in_secret_0123456789"
NO_ACCESS_TOKEN = "hf_stand_in_without_access"
SHA = "0123456789abcdef0123456789abcdef01234567"

REPOS = {
    ("model", "meta-llama/Llama-2-7b-hf"): {
        "gated": "manual",
        "files": {
            "tokenizer.model": b"sentencepiece model bytes",
            "tokenizer.json": b'{"version": "1.0"}',
            "tokenizer_config.json": b'{"add_bos_token": true}',
            "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2}',
            "config.json": b'{"model_type": "llama"}',
            "model-00001-of-00001.safetensors": b"\x00" * 1024,
            "model.safetensors.index.json": b'{"weight_map": {}}',
            "pytorch_model.bin": b"\x01" * 1024,
            "README.md": b"# Llama 2",
        },
    },
    ("model", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"): {
        "gated": False,
        "files": {
            "tokenizer.model": b"tiny tokenizer",
            "tokenizer_config.json": b"{}",
            "config.json": b"{}",
            "pytorch_model.bin": b"\x02" * 2048,
        },
    },
    ("dataset", "cerebras/SlimPajama-627B"): {
        "gated": False,
        "files": {
            "train/chunk1/example_train_0.jsonl.zst": b"zst-0",
            "train/chunk1/example_train_1.jsonl.zst": b"zst-1",
            "train/chunk2/example_train_0.jsonl.zst": b"zst-2",
            "validation/chunk1/example_holdout_0.jsonl.zst": b"zst-3",
            "README.md": b"# SlimPajama",
        },
    },
}


class HubStandIn(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        self.server.requests.append((self.command, url.path, self.headers.get("Authorization")))
        if parts[0] == "api":  # /api/{models,datasets}/{org}/{name}[/revision/{rev}] or .../tree/{rev}
            repo_type, repo_id, what = parts[1][:-1], "/".join(parts[2:4]), (parts[4:] or ["revision"])[0]
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return
            if what == "revision":
                files = [{"rfilename": f} for f in repo["files"]]
                info = {"id": repo_id, "sha": SHA, "siblings": files, "gated": repo["gated"], "private": False}
                return self._send(200, json.dumps(info).encode(), body)
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in repo["files"].items()
            ]
            return self._send(200, json.dumps(tree).encode(), body)
        # /{org}/{name}/resolve/{rev}/{path} or /datasets/{org}/{name}/resolve/{rev}/{path}
        repo_type = "dataset" if parts[0] == "datasets" else "model"
        parts = parts[1:] if repo_type == "dataset" else parts
        repo = self._repo(repo_type, "/".join(parts[:2]))
        if repo is None:
            return
        if repo["gated"]:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {TOKEN}":
                return self._send(401 if auth is None else 403, b"gated", body, {"X-Error-Code": "GatedRepo"})
        data = repo["files"].get("/".join(parts[4:]))
        if data is None:
            return self._send(404, b"entry not found", body, {"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        self._send(200, data, body, headers)

    def _repo(self, repo_type: str, repo_id: str):
        repo = REPOS.get((repo_type, repo_id))
        if repo is None:
            self._send(404, b"Repository not found", True, {"X-Error-Code": "RepoNotFound"})
        return repo

    def _send(self, status: int, data: bytes, body: bool, headers: dict = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def run_download(tmp_path: Path, endpoint: str, *args: str, token: str = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "download.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def endpoint_of(hub) -> str:
    return f"http://127.0.0.1:{hub.server_address[1]}"


def test_download_lists_registry_names(tmp_path):
    from lit_gpt.config import Config

    out = run_download(tmp_path, "http://127.0.0.1:9")
    assert out.returncode == 0, out.stderr
    # after two header lines: every name --model_name takes, with its repo id where it has one
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert {"micro-llama", "tiny-llama-1.1b", "Llama-2-7b-hf"} <= {row[0] for row in rows}
    for name, *_ in rows:
        Config.from_name(name)
    assert ["tiny-llama-1.1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"] in rows
    assert ["Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"] in rows


def test_download_tokenizer_only_of_gated_repo(tmp_path, hub):
    out = run_download(
        tmp_path, endpoint_of(hub), "--repo_id", "meta-llama/Llama-2-7b-hf", "--access_token", TOKEN,
        "--tokenizer_only", "true",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "checkpoints" / "meta-llama" / "Llama-2-7b-hf"
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert set(files) == {"generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}
    assert (folder / "tokenizer.model").read_bytes() == b"sentencepiece model bytes"
    assert TOKEN not in out.stdout + out.stderr
    # the token went to the hub, in the Authorization header
    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)


def test_download_weights_prefer_safetensors(tmp_path, hub):
    out = run_download(tmp_path, endpoint_of(hub), "--repo_id", "meta-llama/Llama-2-7b-hf", token=TOKEN)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "checkpoints" / "meta-llama" / "Llama-2-7b-hf"
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"} <= files
    assert "pytorch_model.bin" not in files and "README.md" not in files
    assert TOKEN not in out.stdout + out.stderr

    # a repo with only PyTorch .bin weights gets those
    out = run_download(tmp_path, endpoint_of(hub), "--repo_id", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "checkpoints/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/pytorch_model.bin").is_file()


@pytest.mark.parametrize("patterns", ["['train/chunk1/*']", "train/chunk1/*"])
def test_download_dataset_slice(tmp_path, hub, patterns):
    # a list of patterns, or one pattern as a plain string (what the data-preparation errors suggest)
    out = run_download(
        tmp_path, endpoint_of(hub), "--repo_id", "cerebras/SlimPajama-627B", "--repo_type", "dataset",
        "--allow_patterns", patterns,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # where scripts/prepare_slimpajama.py looks by default
    root = tmp_path / "data" / "slimpajama-raw"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.zst"))
    assert files == ["train/chunk1/example_train_0.jsonl.zst", "train/chunk1/example_train_1.jsonl.zst"]
    assert (root / "train/chunk1/example_train_1.jsonl.zst").read_bytes() == b"zst-1"


def test_download_dataset_folders_are_where_preparation_looks():
    import inspect

    from prepared_data import load_script

    def default_input_dir(script: str) -> Path:
        return inspect.signature(load_script(script).main).parameters["input_dir"].default

    download = load_script("download")
    # prepare_slimpajama.py reads one split of the download
    assert download.dataset_dir("cerebras/SlimPajama-627B") / "train" == default_input_dir("prepare_slimpajama")
    assert download.dataset_dir("bigcode/starcoderdata") == default_input_dir("prepare_starcoder")
    # the hub matches repo ids regardless of case, and so does the folder (the seed tutorial clones the lower-case id)
    assert download.dataset_dir("cerebras/slimpajama-627b") == Path("data/slimpajama-raw")
    assert download.dataset_dir("someone/My-Data") == Path("data/my-data-raw")


def test_download_commands_of_preparation_errors_parse():
    """The download commands that lit_gpt/data/prepare.py's errors suggest parse with download.py's own parser."""
    from test_tutorials import assert_parses, commands, script_call

    from lit_gpt.data.readers import DOWNLOAD_HINT

    for kind, hint in DOWNLOAD_HINT.items():
        calls = [script_call(tokens) for tokens in commands("\n".join(re.findall(r"`([^`]+)`", hint)))]
        calls = [args for script, args in filter(None, calls) if script == "scripts/download.py"]
        assert calls, f"no download command in the {kind} hint: {hint}"
        for args in calls:
            assert assert_parses("scripts/download.py", args).allow_patterns, (kind, args)


@pytest.mark.parametrize(
    ("args", "token", "expected"),
    [
        (["--repo_id", "meta-llama/Llama-2-7b-hf", "--tokenizer_only", "true"], None, "is gated: accept its license"),
        (["--repo_id", "meta-llama/Llama-2-7b-hf"], NO_ACCESS_TOKEN, "your token has no access to the gated repo"),
        (["--repo_id", "meta-llama/Llama-2-7b-typo"], None, "no model repo 'meta-llama/Llama-2-7b-typo'"),
        (["--repo_id", "cerebras/SlimPajama-627B"], None, "pass --repo_type dataset if it is a dataset"),
    ],
)
def test_download_errors_are_one_line(tmp_path, hub, args, token, expected):
    out = run_download(tmp_path, endpoint_of(hub), *args, token=token)
    assert out.returncode == 2
    # one line that says what to do (after the progress bar, when the download had started), no traceback
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    assert expected in out.stderr.strip().splitlines()[-1]
    if token:
        assert token not in out.stdout + out.stderr


def test_download_unreachable_hub(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run_download(tmp_path, f"http://127.0.0.1:{port}", "--repo_id", "meta-llama/Llama-2-7b-hf", token=TOKEN)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in out.stderr
    assert TOKEN not in out.stdout + out.stderr


def test_download_disk_errors_are_not_network_errors(tmp_path, hub):
    # a real local error: the folder to write cannot be made, because a file has its parent's name
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = run_download(
        tmp_path, endpoint_of(hub), "--repo_id", "cerebras/SlimPajama-627B", "--repo_type", "dataset",
        "--allow_patterns", "train/chunk1/*", "--local_dir", "blocker/slimpajama-raw",
    )  # fmt: skip
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    assert "cannot reach" not in last and "network" not in last, last
    assert "failed on this machine: [Errno 20] Not a directory" in last, last


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(28, "No space left on device", "data/x.zst"), "No space left on device: 'data/x.zst'; free some"),
        (PermissionError(13, "Permission denied", "data"), "Permission denied: 'data'; pick a --local_dir"),
        (ConnectionRefusedError(111, "Connection refused"), "cannot reach the Hugging Face Hub"),
    ],
)
def test_download_os_errors_say_what_failed(error, expected):
    from prepared_data import load_script

    download = load_script("download")

    def fail(**kwargs):
        raise error

    with pytest.raises(download.DownloadError, match=re.escape(expected)):
        download._call(fail, None, repo_id="cerebras/SlimPajama-627B", repo_type="dataset")


def test_download_help_does_not_show_the_token(tmp_path):
    out = run_download(tmp_path, "http://127.0.0.1:9", "--help", token=TOKEN)
    assert out.returncode == 0
    assert "--repo_type" in out.stdout and TOKEN not in out.stdout + out.stderr


def test_download_print_config_does_not_show_the_token(tmp_path):
    out = run_download(tmp_path, "http://127.0.0.1:9", "--repo_id", "a/b", "--access_token", TOKEN, "--print_config")
    assert out.returncode == 0 and "repo_id: a/b" in out.stdout, out.stderr
    assert TOKEN not in out.stdout + out.stderr
