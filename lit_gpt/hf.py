"""The one mapping between lit-gpt and Hugging Face Llama: weight names and layouts, and configs.

lit fuses q, k and v into `attn.attn`, laid out per query group ([q x q_per_kv, k, v] x n_query_groups); HF keeps
`q_proj`, `k_proj` and `v_proj` apart. Both use the "rotate half" rotary layout, so no permutation is needed.
"""

import json
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch

from lit_gpt.config import Config

# lit name -> HF name, "{}" standing for the layer index
_LAYER_MAP = {
    "transformer.h.{}.norm_1.weight": "model.layers.{}.input_layernorm.weight",
    "transformer.h.{}.attn.proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "transformer.h.{}.norm_2.weight": "model.layers.{}.post_attention_layernorm.weight",
    "transformer.h.{}.mlp.fc_1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "transformer.h.{}.mlp.fc_2.weight": "model.layers.{}.mlp.up_proj.weight",
    "transformer.h.{}.mlp.proj.weight": "model.layers.{}.mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_QK_NORM_MAP = {
    "transformer.h.{}.attn.norm_q.weight": "model.layers.{}.self_attn.q_norm.weight",
    "transformer.h.{}.attn.norm_k.weight": "model.layers.{}.self_attn.k_norm.weight",
}
# OLMo 2: the norms after attention and MLP
_POST_NORM_MAP = {
    "transformer.h.{}.norm_1.weight": "model.layers.{}.post_attention_layernorm.weight",
    "transformer.h.{}.norm_2.weight": "model.layers.{}.post_feedforward_layernorm.weight",
}


def _layer_map(config: Config) -> Dict[str, str]:
    names = dict(_LAYER_MAP)
    if config.norm_placement == "post":
        names.update(_POST_NORM_MAP)
    if config.norm_qk:
        names.update(_QK_NORM_MAP)
    return names


_LAYER_RE = re.compile(r"(.*\.)(\d+)(\..*)")


def _split_layer(name: str) -> Tuple[str, int]:
    m = _LAYER_RE.fullmatch(name)
    if m is None:
        return name, -1
    return m.group(1) + "{}" + m.group(3), int(m.group(2))


def _check_llama(config: Config) -> None:
    if config.mlp_class_name != "LLaMAMLP" or config.norm_class_name != "RMSNorm" or config.bias:
        raise ValueError(f"{config.name!r} is not a Llama architecture; only Llama configs map to HF Llama")


def split_qkv(qkv: torch.Tensor, config: Config) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lit's fused `attn.attn.weight` -> HF's q_proj, k_proj, v_proj weights."""
    q_per_kv = config.n_head // config.n_query_groups
    qkv = qkv.view(config.n_query_groups, q_per_kv + 2, config.head_size, -1)
    q, k, v = qkv.split((q_per_kv, 1, 1), dim=1)
    return tuple(t.reshape(-1, t.size(-1)).clone() for t in (q, k, v))


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Config) -> torch.Tensor:
    """HF's q_proj, k_proj, v_proj weights (or 1-D biases) -> lit's fused `attn.attn.weight` (or `.bias`)."""
    q_per_kv = config.n_head // config.n_query_groups
    hs, ng = config.head_size, config.n_query_groups
    trailing = q.shape[1:]  # (n_embd,) for a weight, () for a bias
    q = q.reshape(ng, q_per_kv, hs, -1)
    k = k.reshape(ng, 1, hs, -1)
    v = v.reshape(ng, 1, hs, -1)
    return torch.cat((q, k, v), dim=1).reshape(-1, *trailing)


def fuse_litgpt_qkv(qkv: torch.Tensor, config: Config) -> torch.Tensor:
    """litgpt's (>= 0.5) `attn.qkv.weight` (or `.bias`), laid out [all q, all k, all v] -> lit's `attn.attn` one."""
    C = config
    q, k, v = qkv.split((C.n_head * C.head_size, C.n_query_groups * C.head_size, C.n_query_groups * C.head_size))
    return fuse_qkv(q, k, v, C)


def lit_to_hf(items: Iterable[Tuple[str, torch.Tensor]], config: Config) -> Iterator[Tuple[str, torch.Tensor]]:
    """Map (name, tensor) pairs of a lit state dict to HF Llama's, one tensor at a time."""
    _check_llama(config)
    layer_map = _layer_map(config)
    for name, tensor in items:
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the embedding: stored once, as HF's tied checkpoints do
        if name in _GLOBAL_MAP:
            yield _GLOBAL_MAP[name], tensor
            continue
        template, layer = _split_layer(name)
        if template in ("transformer.h.{}.attn.attn.weight", "transformer.h.{}.attn.attn.bias"):
            attr = template.rsplit(".", 1)[1]
            q, k, v = split_qkv(tensor, config)
            yield f"model.layers.{layer}.self_attn.q_proj.{attr}", q.reshape(-1, *tensor.shape[1:])
            yield f"model.layers.{layer}.self_attn.k_proj.{attr}", k.reshape(-1, *tensor.shape[1:])
            yield f"model.layers.{layer}.self_attn.v_proj.{attr}", v.reshape(-1, *tensor.shape[1:])
        elif template in layer_map:
            yield layer_map[template].format(layer), tensor
        else:
            raise KeyError(f"No Hugging Face Llama name for the lit weight {name!r}")


_HF_GLOBAL = {v: k for k, v in _GLOBAL_MAP.items()}
_HF_LAYER = {v: k for k, v in _LAYER_MAP.items()}


def hf_to_lit(
    items: Iterable[Tuple[str, torch.Tensor]], config: Config, tie_word_embeddings: bool = False
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Map (name, tensor) pairs of an HF Llama state dict to lit's; q, k and v are fused as soon as all three of
    a layer have been seen, so that only one layer's attention weights are held at a time.

    `tie_word_embeddings` is the flag of the HF config: its head reuses the embedding (and its files usually have no
    `lm_head.weight`). lit's head is a separate weight, which gets a copy of the embedding: the same logits, but
    continued training updates the two apart."""
    _check_llama(config)
    tie_word_embeddings = tie_word_embeddings or config.tie_embeddings
    hf_layer = {v: k for k, v in _layer_map(config).items()}
    pending: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
    for name, tensor in items:
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer that older transformers versions saved; lit rebuilds it
        if name == "lm_head.weight" and tie_word_embeddings:
            continue  # the embedding, saved twice; the copy below stands for it
        if name in _HF_GLOBAL:
            yield _HF_GLOBAL[name], tensor
            if name == "model.embed_tokens.weight" and tie_word_embeddings and not config.tie_embeddings:
                yield "lm_head.weight", tensor.clone()
            continue
        template, layer = _split_layer(name)
        if template in hf_layer:
            yield hf_layer[template].format(layer), tensor
            continue
        m = re.fullmatch(r"model\.layers\.\{\}\.self_attn\.([qkv])_proj\.(weight|bias)", template)
        if m is None:
            raise KeyError(f"No lit name for the Hugging Face weight {name!r}")
        parts = pending.setdefault((layer, m.group(2)), {})
        parts[m.group(1)] = tensor
        if len(parts) == 3:
            del pending[(layer, m.group(2))]
            fused = fuse_qkv(parts["q"], parts["k"], parts["v"], config)
            yield f"transformer.h.{layer}.attn.attn.{m.group(2)}", fused
    if pending:
        raise KeyError(f"Incomplete q/k/v projections for layers {sorted(pending)}")


def lit_to_hf_state_dict(state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    return dict(lit_to_hf(state_dict.items(), config))


def hf_to_lit_state_dict(state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    return dict(hf_to_lit(state_dict.items(), config))


def hf_model_type(config: Config) -> str:
    """The transformers family that computes what `config` does: llama, qwen2 (biases on q, k, v), qwen3 (per-head QK
    norm) or olmo2 (QK norm over the projections, norms after attention and MLP)."""
    if config.attn_bias and (config.norm_qk or config.norm_placement != "pre"):
        raise ValueError(
            f"{config.name!r} has attn_bias with norm_qk={config.norm_qk!r}, norm_placement={config.norm_placement!r}: "
            "only Qwen2 (neither) has biases on q, k and v alone among the transformers families"
        )
    if config.norm_qk == "head" and config.norm_placement == "pre":
        return "qwen3"
    if config.norm_qk == "full" and config.norm_placement == "post":
        return "olmo2"
    if config.norm_qk is None and config.norm_placement == "pre":
        return "qwen2" if config.attn_bias else "llama"
    raise ValueError(
        f"{config.name!r} combines norm_qk={config.norm_qk!r} with norm_placement={config.norm_placement!r}, which no "
        "transformers family computes (Llama: neither; Qwen3: 'head' with 'pre'; OLMo 2: 'full' with 'post')"
    )


def config_to_hf(config: Config) -> dict:
    """The `config.json` of the transformers model (`hf_model_type`) equal to `config`."""
    _check_llama(config)
    if config.rope_n_elem != config.head_size:
        raise ValueError("HF Llama rotates every channel of a head; this config has rotary_percentage < 1")
    model_type = hf_model_type(config)
    rope = {"rope_type": "default", "rope_theta": float(config.rope_base)}
    if config.rope_adjustments:
        adj = config.rope_adjustments
        rope.update(
            rope_type="llama3",
            factor=float(adj["factor"]),
            low_freq_factor=float(adj["low_freq_factor"]),
            high_freq_factor=float(adj["high_freq_factor"]),
            original_max_position_embeddings=int(adj["original_max_seq_len"]),
        )
    architecture = {
        "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
        "olmo2": "Olmo2ForCausalLM",
    }  # fmt: skip
    return {
        "architectures": [architecture[model_type]],
        "model_type": model_type,
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": float(config.rope_base),  # transformers < 5
        "rope_parameters": rope,  # transformers 5
        **({"rope_scaling": rope} if config.rope_adjustments else {}),  # transformers < 5
        # Qwen2's q, k, v biases are its family's, not a key (the others' attention_bias biases o_proj too)
        **({} if model_type == "qwen2" else {"attention_bias": False}),
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


# the transformers families that lit's GPT computes, by config.json's `model_type`: the switches each one sets
HF_FAMILIES = {
    "llama": {},  # also SmolLM2's
    "qwen2": {"attn_bias": True},  # biases on q, k and v, none on the output projection
    "qwen3": {"norm_qk": "head"},
    "olmo2": {"norm_qk": "full", "norm_placement": "post"},
}
# config.json keys that the reading below takes
_HF_READ = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
    "rope_scaling", "tie_word_embeddings",
}  # fmt: skip
# keys that describe no computation of the model: bookkeeping, token ids, initialization, generation defaults, and a
# sliding window's size and layers, which only apply with `use_sliding_window` (refused below)
_HF_IGNORED = {
    "_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "id2label", "label2id",
    "problem_type", "return_dict", "output_attentions", "output_hidden_states", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size",
    "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "finetuning_task", "tokenizer_class", "prefix",
    "task_specific_params", "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "pretraining_tp",  # Llama's matmuls split in slices: the same products
    "sliding_window", "max_window_layers",
    "is_llama_config", "transformers.js_config",  # SmolLM2's
}  # fmt: skip
# what the families' configs can ask for that lit's GPT does not compute, with the value at which it computes the same
_HF_DEFAULTS = {
    "attention_bias": False,  # Llama's, Qwen3's and OLMo 2's put a bias on the output projection too
    "mlp_bias": False,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "clip_qkv": None,  # OLMo's clipping of q, k, v
    "rope_interleaved": False,
    "num_experts": 0,  # a mixture of experts (the *_moe families)
    "use_mrope": False,  # Qwen2-VL's multimodal RoPE
}
_FULL_ATTENTION = "full_attention"


def config_from_hf(hf: dict, name: str = "", source: str = "config.json") -> Config:
    """A lit `Config` from a Hugging Face `config.json` dict of a family in `HF_FAMILIES` (Llama, SmolLM2, Qwen2 and
    Qwen2.5, Qwen3, OLMo 2).

    Refuses, naming the key in `source`, what lit's model computes differently (another RoPE scaling than Llama 3's,
    biases besides Qwen2's q/k/v ones, another activation, attention dropout, a sliding window, experts) rather than
    build a model whose outputs would silently differ, and any key it does not know.
    """
    model_type = hf.get("model_type")
    if model_type not in HF_FAMILIES:
        raise ValueError(
            f"{source} has model_type={model_type!r}; lit's GPT computes the families "
            f"{', '.join(HF_FAMILIES)} (SmolLM2 is llama): pick a model of one of them"
        )
    check_hf_representable(hf, source)
    n_head = hf["num_attention_heads"]
    return Config(
        name=name,
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_embd=hf["hidden_size"],
        head_size=hf.get("head_dim") or hf["hidden_size"] // n_head,
        n_query_groups=hf.get("num_key_value_heads") or n_head,
        intermediate_size=hf["intermediate_size"],
        rotary_percentage=1.0,
        rope_base=int(_rope_theta(hf)),
        parallel_residual=False,
        bias=False,
        norm_eps=hf.get("rms_norm_eps", 1e-6 if model_type != "llama" else 1e-5),
        norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_adjustments=_rope_adjustments(hf),
        **HF_FAMILIES[model_type],
    )


def check_hf_representable(hf: dict, source: str = "config.json") -> None:
    """Raise, naming the field and its value, if `hf` (a `config.json` of a family in `HF_FAMILIES`) asks for what
    lit's GPT does not compute, or has a key that is neither read, nor known to change nothing, nor refused."""
    scaling_type = _rope_type(hf)
    theta = _rope_theta(hf)
    refused = {
        "rope_scaling" if hf.get("rope_scaling") else "rope_parameters.rope_type": (
            hf.get("rope_scaling") or scaling_type,
            scaling_type not in ("default", "llama3"),
        ),
        "rope_theta": (theta, theta != int(theta)),  # lit's rope_base is an integer
        # a key written as null is transformers' default
        **{key: (hf.get(key), hf.get(key, default) not in (default, None)) for key, default in _HF_DEFAULTS.items()},
    }
    layer_types = hf.get("layer_types") or []
    refused["layer_types"] = (layer_types, any(t != _FULL_ATTENTION for t in layer_types))
    for field, (value, unsupported) in refused.items():
        if unsupported:
            raise ValueError(
                f"{source} has {field}={value!r}, which lit's GPT does not compute (plain or Llama 3 RoPE with an "
                "integer base, no biases but Qwen2's on q, k, v, SiLU, no dropout, full attention in every layer, no "
                "experts): its outputs would differ from transformers'. Pick a model without it, or add it to "
                "lit_gpt/model.py and lit_gpt/hf.py first."
            )
    unknown = sorted(k for k in hf if k not in _HF_READ and k not in _HF_IGNORED and k not in _HF_DEFAULTS)
    unknown = [k for k in unknown if k != "layer_types"]
    if unknown:
        raise ValueError(
            f"{source} has {unknown[0]}={hf[unknown[0]]!r}, a key that this reader does not know (it reads "
            f"{', '.join(HF_FAMILIES)} configs): if it changes nothing of the model's computation, delete it from a "
            "copy of the file; if it does, lit's GPT does not compute that model"
        )


def _rope_type(hf: dict) -> str:
    # transformers < 5 writes `rope_scaling` ({"rope_type" or "type": "linear" | "dynamic" | "llama3" | "yarn", ...}),
    # transformers 5 folds it into `rope_parameters` with the rope type
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def _rope_adjustments(hf: dict) -> Optional[dict]:
    """Llama 3's RoPE frequency scaling in lit's names, or None for plain RoPE."""
    if _rope_type(hf) != "llama3":
        return None
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    return dict(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_seq_len=int(scaling["original_max_position_embeddings"]),
    )


def _rope_theta(hf: dict) -> float:
    return (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000))


def read_model_config(path: Path) -> Config:
    """`--model_config`: a Hugging Face `config.json` of a family in `HF_FAMILIES` (it has a `model_type`), or a lit
    config file (ours, lit-gpt's `lit_config.json`, litgpt's `model_config.yaml`). A Hugging Face config's model is
    named after its folder (`SmolLM2-135M/config.json`: SmolLM2-135M)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--model_config {str(path)!r} is not a file: pass a config.json of a Hugging Face model (llama, qwen2, "
            "qwen3, olmo2) or a lit_config.json"
        )
    if path.suffix in (".yaml", ".yml"):
        return Config.from_file(path)
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--model_config {str(path)!r} is not a JSON file ({e})") from None
    if not isinstance(conf, dict):
        raise ValueError(f"--model_config {str(path)!r} does not hold a model config (a mapping of names to values)")
    if "model_type" not in conf:
        return Config.from_file(path)
    name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return config_from_hf(conf, name=name, source=str(path))
