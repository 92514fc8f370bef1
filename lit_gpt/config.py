"""Model configurations: one dataclass and a registry of named configs (lit-gpt's layout and names)."""

import difflib
import json
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

# the fields that decide the computation: weights of a config that differs in one of them are refused
ARCHITECTURE = (
    "n_layer", "n_head", "n_embd", "head_size", "n_query_groups", "intermediate_size", "rope_base", "norm_eps",
    "tie_embeddings", "attn_bias", "norm_qk", "norm_placement", "rope_adjustments",
)  # fmt: skip


def find_multiple(n: int, k: int) -> int:
    """The smallest multiple of `k` that is >= `n`."""
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class Config:
    name: str = ""
    hf_config: dict = field(default_factory=dict)  # {"org": ..., "name": ...} on the Hugging Face hub
    block_size: int = 4096
    vocab_size: int = 50254
    padding_multiple: int = 512
    padded_vocab_size: Optional[int] = None
    n_layer: int = 16
    n_head: int = 32
    n_embd: int = 4096
    head_size: Optional[int] = None
    # n_query_groups == n_head: multi-head attention; 1: multi-query; in between: grouped-query attention
    n_query_groups: Optional[int] = None
    intermediate_size: Optional[int] = None
    rotary_percentage: float = 0.25
    rope_base: int = 10000
    parallel_residual: bool = True
    bias: bool = True
    norm_eps: float = 1e-5
    norm_class_name: Literal["RMSNorm", "LayerNorm"] = "LayerNorm"
    mlp_class_name: Literal["LLaMAMLP", "GptNeoxMLP"] = "GptNeoxMLP"
    # the output head is the input embedding, one weight (Llama 3.2, SmolLM2, Qwen3)
    tie_embeddings: bool = False
    # biases on the q, k, v projection only (Qwen2.5); `bias` puts them on every linear layer
    attn_bias: bool = False
    # RMSNorm on queries and keys before RoPE: "head" normalizes each head (Qwen3), "full" the whole projection
    # (OLMo 2); None: none
    norm_qk: Optional[Literal["head", "full"]] = None
    # "pre": x + f(norm(x)); "post": x + norm(f(x)) (OLMo 2)
    norm_placement: Literal["pre", "post"] = "pre"
    # Llama 3's RoPE frequency scaling: {"factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len"}
    rope_adjustments: Optional[dict] = None

    def __post_init__(self) -> None:
        if isinstance(self.norm_qk, bool):  # litgpt's flag: per head unless its norm_qk_type says otherwise
            self.norm_qk = "head" if self.norm_qk else None
        if not self.name:
            self.name = self.hf_config.get("name", self.name)
        if self.padded_vocab_size is None:
            self.padded_vocab_size = find_multiple(self.vocab_size, self.padding_multiple)
        else:
            # vocab size should not be larger than padded_vocab_size
            self.vocab_size = min(self.vocab_size, self.padded_vocab_size)
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; set head_size")
            self.head_size = self.n_embd // self.n_head
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.n_head % self.n_query_groups:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_query_groups={self.n_query_groups}")
        if self.intermediate_size is None:
            if self.mlp_class_name == "LLaMAMLP":
                raise ValueError("The LLaMAMLP needs `intermediate_size`")
            self.intermediate_size = 4 * self.n_embd
        self.rope_n_elem = int(self.rotary_percentage * self.head_size)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        """A registered config by lit name (`tiny-llama-1.1b`) or Hugging Face name (`TinyLlama-1.1B-...`)."""
        conf = name_to_config.get(name) or hf_name_to_config.get(name)
        if conf is None:
            known = list(dict.fromkeys([*name_to_config, *hf_name_to_config]))  # a lit name is often the hub's
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(
                f"{name!r} is not a known model name.{hint} Run `python scripts/download.py` to list every name."
            )
        conf = deepcopy(conf)
        conf.update(overrides)
        return cls(**conf)

    @classmethod
    def from_file(cls, path: Union[str, Path], **overrides: Any) -> "Config":
        """A config file: ours or lit-gpt's `lit_config.json`, or litgpt's `model_config.yaml` (`from_their_keys`)."""
        path = Path(path)
        with open(path, encoding="utf-8") as fp:
            if path.suffix in (".yaml", ".yml"):
                import yaml  # lazy: only litgpt's files are YAML

                conf = yaml.safe_load(fp)
            else:
                conf = json.load(fp)
        if not isinstance(conf, dict):
            raise ValueError(f"{path} does not hold a model config (a mapping of field names to values)")
        conf.update(overrides)
        return cls(**from_their_keys(conf, str(path)))

    # lit-gpt's name for reading a config file
    from_json = from_file

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, **overrides: Any) -> "Config":
        """The config file of a checkpoint directory (`checkpoint_config_file`), or the registry entry named like the
        directory; FileNotFoundError when there is neither."""
        checkpoint_dir = Path(checkpoint_dir)
        file = checkpoint_config_file(checkpoint_dir)
        if file is not None:
            return cls.from_file(file, **overrides)
        if checkpoint_dir.name not in name_to_config and checkpoint_dir.name not in hf_name_to_config:
            raise FileNotFoundError(
                f"{str(checkpoint_dir)!r} has no {' or '.join(CONFIG_FILES)} and is not named like a known model: "
                "pass a lit checkpoint directory (`python scripts/convert_hf_checkpoint.py` makes one)"
            )
        return cls.from_name(checkpoint_dir.name, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_file(self, path: Union[str, Path]) -> None:
        """`lit_config.json` that lit-gpt (February 2024) reads as well: its key names, and of our fields only those
        it cannot derive itself (a `head_size` other than n_embd // n_head, which it would rightly refuse)."""
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(to_their_keys(self), fp, indent=2)

    @property
    def hf_repo_id(self) -> str:
        return f"{self.hf_config['org']}/{self.hf_config['name']}" if self.hf_config else ""


########################
# TinyLlama
########################
configs = []
tiny_llama = [
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/blob/main/config.json
    dict(name="tiny-llama-1.1b", hf_config=dict(org="TinyLlama", name="TinyLlama-1.1B-intermediate-step-1431k-3T")),
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json
    dict(name="tiny-llama-1.1b-chat", hf_config=dict(org="TinyLlama", name="TinyLlama-1.1B-Chat-v1.0")),
]
for c in tiny_llama:
    c.update(
        block_size=2048,
        vocab_size=32000,
        padding_multiple=64,
        n_layer=22,
        n_head=32,
        n_embd=2048,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=1e-5,
        mlp_class_name="LLaMAMLP",
        intermediate_size=5632,
        n_query_groups=4,
    )
    configs.append(c)

# The embedded default: TinyLlama's architecture and vocabulary at ~8.6M parameters (most of them in the
# embedding and output layers), small enough to train visibly on a 2-core CPU in minutes.
configs.append(
    dict(
        name="micro-llama",
        block_size=256,
        vocab_size=32000,
        padding_multiple=64,
        n_layer=4,
        n_head=4,
        n_embd=128,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=1e-5,
        mlp_class_name="LLaMAMLP",
        intermediate_size=352,
        n_query_groups=2,
    )
)

########################
# Meta Llama 2
########################
llama_2 = [
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    dict(
        name="Llama-2-7b{}-hf",
        hf_config=dict(org="meta-llama", name="Llama-2-7b{}-hf"),
        n_layer=32,
        n_head=32,
        n_embd=4096,
        intermediate_size=11008,
    ),
    # https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
    dict(
        name="Llama-2-13b{}-hf",
        hf_config=dict(org="meta-llama", name="Llama-2-13b{}-hf"),
        n_layer=40,
        n_head=40,
        n_embd=5120,
        intermediate_size=13824,
    ),
    # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
    dict(
        name="Llama-2-70b{}-hf",
        hf_config=dict(org="meta-llama", name="Llama-2-70b{}-hf"),
        n_layer=80,
        n_head=64,
        n_embd=8192,
        n_query_groups=8,
        intermediate_size=28672,
    ),
]
for c in llama_2:
    for kind in ("", "-chat"):
        copy = deepcopy(c)
        copy["name"] = c["name"].format(kind)
        copy["hf_config"]["name"] = c["hf_config"]["name"].format(kind)
        copy.update(
            block_size=4096,
            vocab_size=32000,
            padding_multiple=64,
            rotary_percentage=1.0,
            parallel_residual=False,
            bias=False,
            norm_class_name="RMSNorm",
            norm_eps=1e-5,
            mlp_class_name="LLaMAMLP",
        )
        configs.append(copy)

########################
# Meta Llama 3.2 (https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json, .../Llama-3.2-3B/...)
########################
_llama_like = dict(
    rotary_percentage=1.0,
    parallel_residual=False,
    bias=False,
    norm_class_name="RMSNorm",
    mlp_class_name="LLaMAMLP",
)
for name, n_layer, n_embd, n_head in (("Llama-3.2-1B", 16, 2048, 32), ("Llama-3.2-3B", 28, 3072, 24)):
    configs.append(
        dict(
            name=name,
            hf_config=dict(org="meta-llama", name=name),
            block_size=131072,
            vocab_size=128256,
            padded_vocab_size=128256,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_query_groups=8,
            intermediate_size=8192,
            rope_base=500000,
            rope_adjustments=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192),
            norm_eps=1e-5,
            tie_embeddings=True,
            **_llama_like,
        )
    )

########################
# SmolLM2 (https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json and the 360M, 1.7B ones)
########################
for name, n_layer, n_embd, n_head, n_query_groups, intermediate_size, rope_base in (
    ("SmolLM2-135M", 30, 576, 9, 3, 1536, 100000),
    ("SmolLM2-360M", 32, 960, 15, 5, 2560, 100000),
    ("SmolLM2-1.7B", 24, 2048, 32, 32, 8192, 130000),
):
    configs.append(
        dict(
            name=name,
            hf_config=dict(org="HuggingFaceTB", name=name),
            block_size=8192,
            vocab_size=49152,
            padded_vocab_size=49152,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_query_groups=n_query_groups,
            intermediate_size=intermediate_size,
            rope_base=rope_base,
            norm_eps=1e-5,
            tie_embeddings=True,
            **_llama_like,
        )
    )

########################
# Qwen3 (https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json, .../Qwen3-1.7B/...): head_dim 128
########################
for name, n_embd, intermediate_size in (("Qwen3-0.6B", 1024, 3072), ("Qwen3-1.7B", 2048, 6144)):
    configs.append(
        dict(
            name=name,
            hf_config=dict(org="Qwen", name=name),
            block_size=40960,
            vocab_size=151936,
            padded_vocab_size=151936,
            n_layer=28,
            n_embd=n_embd,
            n_head=16,
            n_query_groups=8,
            head_size=128,
            intermediate_size=intermediate_size,
            rope_base=1000000,
            norm_eps=1e-6,
            norm_qk="head",
            tie_embeddings=True,
            **_llama_like,
        )
    )

########################
# Qwen2.5 (https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json): biases on q, k and v
########################
configs.append(
    dict(
        name="Qwen2.5-0.5B",
        hf_config=dict(org="Qwen", name="Qwen2.5-0.5B"),
        block_size=32768,
        vocab_size=151936,
        padded_vocab_size=151936,
        n_layer=24,
        n_embd=896,
        n_head=14,
        n_query_groups=2,
        intermediate_size=4864,
        rope_base=1000000,
        norm_eps=1e-6,
        attn_bias=True,
        tie_embeddings=True,
        **_llama_like,
    )
)

########################
# OLMo 2 (https://huggingface.co/allenai/OLMo-2-0425-1B/blob/main/config.json)
########################
configs.append(
    dict(
        name="OLMo-2-0425-1B",
        hf_config=dict(org="allenai", name="OLMo-2-0425-1B"),
        block_size=4096,
        vocab_size=100352,
        padded_vocab_size=100352,
        n_layer=16,
        n_embd=2048,
        n_head=16,
        n_query_groups=16,
        intermediate_size=8192,
        rope_base=500000,
        norm_eps=1e-6,
        norm_qk="full",
        norm_placement="post",
        **_llama_like,
    )
)

name_to_config = {c["name"]: c for c in configs}
hf_name_to_config = {c["hf_config"]["name"]: c for c in configs if c.get("hf_config")}


def list_names() -> str:
    """Every registered name that `Config.from_name` takes, one a line, with its Hugging Face repo id beside it where
    it has one (what `python scripts/download.py` prints)."""
    width = max(len(name) for name in name_to_config)
    return "\n".join(f"{name:<{width}}  {Config(**c).hf_repo_id}".rstrip() for name, c in name_to_config.items())


def check_same_architecture(config: Config, saved: Config, source: str, hint: str) -> None:
    """Raise, naming the first `ARCHITECTURE` field in which `--model_name`'s `config` and the config that `source`
    (a checkpoint's config file) records differ; same weight shapes do not make the same model (rope_base, norm_eps).
    `hint` (what the caller's user can do) ends the message."""
    for name in ARCHITECTURE:
        if getattr(config, name) != getattr(saved, name):
            raise ValueError(
                f"--model_name {config.name!r} has {name}={getattr(config, name)} but {source} says "
                f"{getattr(saved, name)}; {hint}"
            )


########################
# Config files of lit-gpt (February 2024) and litgpt (0.5.x)
########################
# in the order a checkpoint directory is searched: ours and lit-gpt's, then litgpt's
CONFIG_FILES = ("lit_config.json", "model_config.yaml")
# their names of our fields
_RENAMED = {"_norm_class": "norm_class_name", "_mlp_class": "mlp_class_name"}
# the fields of lit-gpt's Config (8a101b6) that ours does not have, with the value that this model computes; a file
# that asks for another value asks for a model this one is not, and is refused by name
_LIT_GPT_ONLY = {
    "lm_head_bias": lambda conf: conf.get("bias", True),  # our output layer has a bias exactly when the others do
    "shared_attention_norm": False,
    "gelu_approximate": "none",
    "rope_condense_ratio": 1,
    "n_expert": 0,
    "n_expert_per_token": 0,
}
# litgpt's (0.5.x) further fields, likewise
_LITGPT_ONLY = {
    "attn_bias": lambda conf: conf.get("bias", True),  # the qkv projection's bias is `bias`'s
    "norm_qk": False,
    "norm_qk_type": "default",
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "norm_1": True,
    "norm_2": True,
    "attention_scores_scalar": None,
    "sliding_window_size": None,
    "sliding_window_indices": None,
    "attention_logit_softcapping": None,
    "final_logit_softcapping": None,
    "rope_adjustments": None,
    "rope_interleave": False,
    "rope_local_base_freq": None,
    "rope_indices": None,
    "moe_intermediate_size": None,
    "n_shared_expert": None,
    "n_expert_groups": None,
    "n_topk_groups": None,
    "n_topk_scores_per_group": None,
    "first_k_dense_replace": None,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "scale_embeddings": False,
    "latent_attention": None,
}
_MLP_CLASSES = ("LLaMAMLP", "GptNeoxMLP")
_NORM_CLASSES = ("RMSNorm", "LayerNorm")


def _ours(value: Any, conf: dict) -> Any:
    return value(conf) if callable(value) else value


def from_their_keys(conf: dict, source: str) -> dict:
    """The keyword arguments of our `Config` for a config dict in our names, lit-gpt's or litgpt's: their names of our
    fields renamed, their fields that we do not have dropped where they hold the value this model computes, and a
    one-line refusal naming the first that asks for another (a mixture of experts, QK-norm, GemmaMLP, ...) or any key
    that neither project has."""
    ours = {f.name for f in fields(Config)}
    conf = dict(conf)
    if "org" in conf and "org" not in ours:  # lit-gpt's oldest files: the hub organization beside the name
        conf["hf_config"] = {"org": conf.pop("org"), "name": conf.get("name", "")}
    if "condense_ratio" in conf:  # lit-gpt's older name, which wins as in lit-gpt's `from_json`
        conf["rope_condense_ratio"] = conf.pop("condense_ratio")
    spelled = {}  # our field -> the key the file has for it
    for theirs, name in _RENAMED.items():
        if theirs in conf and name in ours:
            value = conf.pop(theirs)
            if name in conf and conf[name] != value:
                raise ValueError(f"{source} says both {theirs}={value!r} and {name}={conf[name]!r}; keep one")
            conf[name], spelled[name] = value, theirs
    for name, allowed in (("mlp_class_name", _MLP_CLASSES), ("norm_class_name", _NORM_CLASSES)):
        if name in conf and name in ours and conf[name] not in allowed:
            raise ValueError(
                f"{source} asks for {spelled.get(name, name)}={conf[name]!r}, which this project does not implement "
                f"(it has {' and '.join(allowed)}): the checkpoint is of a model it cannot run"
            )
    known = {**_LITGPT_ONLY, **_LIT_GPT_ONLY}
    for key in [k for k in conf if k not in ours]:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(ours), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{source} has a key {key!r}{hint} that neither this project nor lit-gpt/litgpt knows")
        value, expected = conf.pop(key), _ours(known[key], conf)
        if value != expected:
            raise ValueError(
                f"{source} asks for {key}={value!r}, which this project does not implement (it runs the model with "
                f"{key}={expected!r}): the checkpoint is of a model it cannot run"
            )
    return conf


def to_their_keys(config: Config) -> dict:
    """`config` as a dict that lit-gpt's `Config(**d)` (8a101b6) and ours both read: lit-gpt's names, its fields that
    we do not have at the values this model computes, and our fields that it lacks only where they differ from what
    it derives."""
    ours = config.to_dict()
    theirs = {lit: ours.pop(name) for lit, name in _RENAMED.items() if name in ours}
    theirs.update(ours)
    for key, value in _LIT_GPT_ONLY.items():
        if key not in theirs:
            theirs[key] = _ours(value, ours)
    extra = [name for name in ours if name not in _LIT_GPT_FIELDS]
    derived = Config(**from_their_keys({k: theirs[k] for k in _LIT_GPT_FIELDS}, "lit_config.json"))
    return {
        **{k: theirs[k] for k in _LIT_GPT_FIELDS},
        **{k: theirs[k] for k in extra if getattr(derived, k) != getattr(config, k)},
    }


# the fields of lit-gpt's Config at 8a101b6, whose `Config(**json)` refuses any other key
_LIT_GPT_FIELDS = (
    "name", "hf_config", "block_size", "vocab_size", "padding_multiple", "padded_vocab_size", "n_layer", "n_head",
    "n_embd", "rotary_percentage", "parallel_residual", "bias", "lm_head_bias", "n_query_groups",
    "shared_attention_norm", "_norm_class", "norm_eps", "_mlp_class", "gelu_approximate", "intermediate_size",
    "rope_condense_ratio", "rope_base", "n_expert", "n_expert_per_token",
)  # fmt: skip


def checkpoint_config_file(checkpoint_dir: Path) -> Optional[Path]:
    """The model config file of a checkpoint directory (`CONFIG_FILES`), or None."""
    return next((checkpoint_dir / n for n in CONFIG_FILES if (checkpoint_dir / n).is_file()), None)
