"""Download a model's tokenizer (and weights) or a slice of a dataset from the Hugging Face Hub.

Models go to `checkpoints/<org>/<name>/`, datasets to `data/<name>-raw/` (`--repo_type dataset`): SlimPajama to
`data/slimpajama-raw/` and Starcoder to `data/starcoderdata-raw/`, where `scripts/prepare_slimpajama.py` and
`scripts/prepare_starcoder.py` look by default. The access token comes from `--access_token` or the `HF_TOKEN`
environment variable and is never printed.

Examples:

    python scripts/download.py                        # list the model names of the config registry
    python scripts/download.py --repo_id meta-llama/Llama-2-7b-hf --access_token $HF_TOKEN --tokenizer_only true
    python scripts/download.py --repo_id cerebras/SlimPajama-627B --repo_type dataset --allow_patterns 'train/chunk1/*'
"""

import errno
import os
import sys
from pathlib import Path
from typing import List, Literal, Optional, Union

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import UserError, check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from jsonargparse.typing import SecretStr  # noqa: E402

TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
TOKEN_URL = "https://huggingface.co/settings/tokens"
# the folders that the preparation scripts and the tutorials use (the repo's own name would give `slimpajama-627b-raw`);
# keys in lower case: the hub matches repo ids regardless of case
DATASET_DIRS = {"cerebras/slimpajama-627b": "slimpajama-raw", "bigcode/starcoderdata": "starcoderdata-raw"}


class DownloadError(UserError):
    """What went wrong and what to do, in one line."""


def download_from_hub(
    repo_id: Optional[str] = None,
    access_token: Optional[SecretStr] = None,
    tokenizer_only: bool = False,
    repo_type: Literal["model", "dataset"] = "model",
    allow_patterns: Optional[Union[str, List[str]]] = None,
    checkpoint_dir: Path = Path("checkpoints"),
    local_dir: Optional[Path] = None,
) -> None:
    """Download from the Hugging Face Hub (or the mirror that `HF_ENDPOINT` names).

    Args:
        repo_id: For example `meta-llama/Llama-2-7b-hf` or `cerebras/SlimPajama-627B`. Leave out to list the model
            names this project has configs for, with their repo ids.
        access_token: Hugging Face token for gated or private repos (default: the `HF_TOKEN` environment variable,
            else the token of `hf auth login`).
        tokenizer_only: Models: only the tokenizer files, not the weights.
        repo_type: `dataset` for dataset repos such as `cerebras/SlimPajama-627B` or `bigcode/starcoderdata`.
        allow_patterns: Only files matching this glob pattern (`'train/chunk1/*'`) or these patterns
            (`'[train/chunk1/*, validation/chunk1/*]'`), for a slice of a dataset. Models: default is the tokenizer
            files, `config.json` and the weights (safetensors preferred).
        checkpoint_dir: Models go to `checkpoint_dir/<repo_id>`.
        local_dir: Where the files go instead (datasets default to `data/<name>-raw`: `data/slimpajama-raw`,
            `data/starcoderdata-raw`).
    """
    if repo_id is None:
        from lit_gpt.config import list_names

        print(
            "Model names (pretrain/tinyllama.py --model_name, convert_pretrained_checkpoint.py --config_name), each\n"
            "with the Hugging Face repo to pass to --repo_id where it has one (any other repo id works too):"
        )
        print(list_names())
        return

    from huggingface_hub import HfApi, get_token, snapshot_download

    if isinstance(allow_patterns, str):
        allow_patterns = [allow_patterns]
    if isinstance(access_token, SecretStr):  # from the command line: `--print_config` shows it as ****
        access_token = access_token.get_secret_value()
    access_token = access_token or os.getenv("HF_TOKEN") or get_token()
    api = HfApi(token=access_token or False)
    info = _call(api.repo_info, access_token, repo_id=repo_id, repo_type=repo_type)
    if getattr(info, "gated", False) and not access_token:
        raise DownloadError(_gated_message(repo_id, repo_type, token=None))
    if repo_type == "model" and allow_patterns is None:
        allow_patterns = list(TOKENIZER_FILES)
        if not tokenizer_only:
            files = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
            allow_patterns += ["config.json"] + weight_patterns(repo_id, files)
    if local_dir is None:
        if repo_type == "dataset":
            local_dir = dataset_dir(repo_id)
        else:
            local_dir = checkpoint_dir / repo_id
    path = _call(
        snapshot_download,
        access_token,
        repo_id=repo_id,
        repo_type=repo_type,
        allow_patterns=allow_patterns,
        local_dir=local_dir,
        token=access_token or False,
    )
    files = sorted(
        p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file() and ".cache" not in p.parts
    )
    if not files:
        raise DownloadError(f"no file of {repo_id} matches --allow_patterns {allow_patterns}; check the patterns")
    print(f"{len(files)} files of {repo_id} in {local_dir}: {', '.join(files[:8])}{' ...' if len(files) > 8 else ''}")


def dataset_dir(repo_id: str) -> Path:
    """Where a dataset goes without `--local_dir`: `data/slimpajama-raw` for SlimPajama, else `data/<name>-raw`."""
    return Path("data") / DATASET_DIRS.get(repo_id.lower(), f"{repo_id.split('/')[-1].lower()}-raw")


def weight_patterns(repo_id: str, files: List[str]) -> List[str]:
    """The weights to fetch: safetensors when the repo has them, else PyTorch `.bin` files."""
    if any(f.endswith(".safetensors") for f in files):
        return ["*.safetensors", "*.safetensors.index.json"]
    if any(f.endswith(".bin") for f in files):
        return ["*.bin", "*.bin.index.json"]
    raise DownloadError(
        f"{repo_id} has no *.safetensors or *.bin weights; pass --tokenizer_only true for its tokenizer"
    )


def _call(fn, user_token: Optional[str], **kwargs):
    """Call huggingface_hub, turning its errors into one line that says what to do."""
    repo_id, repo_type = kwargs["repo_id"], kwargs["repo_type"]
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        return fn(**kwargs)
    except GatedRepoError:
        raise DownloadError(_gated_message(repo_id, repo_type, user_token)) from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id} has no 'main' revision on {endpoint}") from None
    except RepositoryNotFoundError:
        other = "dataset" if repo_type == "model" else "model"
        raise DownloadError(
            f"no {repo_type} repo {repo_id!r} on {endpoint} (or it is private and "
            f"{'your token has no access' if user_token else 'no token was given'}): check the spelling, pass "
            f"--repo_type {other} if it is a {other}, or run without --repo_id to list the known model repos"
        ) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise DownloadError(f"the hub at {endpoint} answered HTTP {status} for {repo_id}; try again later") from None
    except (LocalEntryNotFoundError, ConnectionError, TimeoutError) as e:
        # connection refused, DNS failure, timeout, or offline mode without the files on disk
        raise DownloadError(_unreachable_message(endpoint, e.__cause__ or e)) from None
    except Exception as e:
        if type(e).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise DownloadError(_unreachable_message(endpoint, e)) from None
        if isinstance(e, OSError):
            # a local error (a full disk, a folder that cannot be written): say which, it is not the network
            raise DownloadError(f"downloading {repo_id} failed on this machine: {e}{_disk_hint(e)}") from None
        raise


def _unreachable_message(endpoint: str, error: BaseException) -> str:
    from huggingface_hub import constants

    offline = ", HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else ""
    return (
        f"cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}{offline}): check your network "
        "connection or proxy, or set HF_ENDPOINT to a reachable mirror"
    )


def _disk_hint(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "; free some space, or pass --local_dir on a disk with room"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "; pick a --local_dir (models: --checkpoint_dir) that you can write to"
    return ""


def _gated_message(repo_id: str, repo_type: str, token: Optional[str]) -> str:
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    if token:
        return f"your token has no access to the gated repo {repo_id}: accept its license at {url} with its account"
    return (
        f"{repo_id} is gated: accept its license at {url} and pass --access_token (or set HF_TOKEN) with a token "
        f"from {TOKEN_URL}"
    )


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(download_from_hub)
