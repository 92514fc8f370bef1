"""The one mapping between lit-gpt and Hugging Face Llama: weight names and layouts, and configs.

lit fuses q, k and v into `attn.attn`, laid out per query group ([q x q_per_kv, k, v] x n_query_groups); HF keeps
`q_proj`, `k_proj` and `v_proj` apart. Both use the "rotate half" rotary layout, so no permutation is needed.
"""

import re
from typing import Dict, Iterable, Iterator, Tuple

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
    for name, tensor in items:
        if name in _GLOBAL_MAP:
            yield _GLOBAL_MAP[name], tensor
            continue
        template, layer = _split_layer(name)
        if template == "transformer.h.{}.attn.attn.weight":
            q, k, v = split_qkv(tensor, config)
            yield f"model.layers.{layer}.self_attn.q_proj.weight", q
            yield f"model.layers.{layer}.self_attn.k_proj.weight", k
            yield f"model.layers.{layer}.self_attn.v_proj.weight", v
        elif template in _LAYER_MAP:
            yield _LAYER_MAP[template].format(layer), tensor
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
    pending: Dict[int, Dict[str, torch.Tensor]] = {}
    for name, tensor in items:
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer that older transformers versions saved; lit rebuilds it
        if name == "lm_head.weight" and tie_word_embeddings:
            continue  # the embedding, saved twice; the copy below stands for it
        if name in _HF_GLOBAL:
            yield _HF_GLOBAL[name], tensor
            if name == "model.embed_tokens.weight" and tie_word_embeddings:
                yield "lm_head.weight", tensor.clone()
            continue
        template, layer = _split_layer(name)
        if template in _HF_LAYER:
            yield _HF_LAYER[template].format(layer), tensor
            continue
        m = re.fullmatch(r"model\.layers\.\{\}\.self_attn\.([qkv])_proj\.weight", template)
        if m is None:
            raise KeyError(f"No lit name for the Hugging Face weight {name!r}")
        parts = pending.setdefault(layer, {})
        parts[m.group(1)] = tensor
        if len(parts) == 3:
            del pending[layer]
            yield f"transformer.h.{layer}.attn.attn.weight", fuse_qkv(parts["q"], parts["k"], parts["v"], config)
    if pending:
        raise KeyError(f"Incomplete q/k/v projections for layers {sorted(pending)}")


def lit_to_hf_state_dict(state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    return dict(lit_to_hf(state_dict.items(), config))


def hf_to_lit_state_dict(state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    return dict(hf_to_lit(state_dict.items(), config))


def config_to_hf(config: Config) -> dict:
    """The `config.json` of a transformers `LlamaForCausalLM` equal to `config`."""
    _check_llama(config)
    if config.rope_n_elem != config.head_size:
        raise ValueError("HF Llama rotates every channel of a head; this config has rotary_percentage < 1")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
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
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},  # transformers 5
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def config_from_hf(hf: dict, name: str = "") -> Config:
    """A lit `Config` from a Hugging Face Llama `config.json` dict.

    Refuses what lit's model computes differently (scaled RoPE, biases, another activation) rather than convert a
    model whose outputs would silently differ. `tie_word_embeddings` is not refused: `hf_to_lit` copies the
    embedding into lit's (untied) `lm_head.weight`.
    """
    if hf.get("model_type") != "llama":
        raise ValueError(f"Only Llama checkpoints are supported, this one is model_type={hf.get('model_type')!r}")
    check_hf_representable(hf)
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
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP",
    )


def check_hf_representable(hf: dict) -> None:
    """Raise, naming the field and its value, if a Llama `config.json` asks for what lit's GPT does not compute."""
    # transformers < 5 writes `rope_scaling` ({"rope_type" or "type": "linear" | "dynamic" | "llama3" | "yarn", ...}),
    # transformers 5 folds it into `rope_parameters` with the rope type
    scaling = hf.get("rope_scaling")
    scaling_type = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    rope_type = (hf.get("rope_parameters") or {}).get("rope_type", "default")
    theta = _rope_theta(hf)
    refused = {
        "rope_scaling": (scaling, scaling is not None and scaling_type != "default"),
        "rope_parameters.rope_type": (rope_type, rope_type != "default"),
        "attention_bias": (hf.get("attention_bias"), bool(hf.get("attention_bias"))),
        "mlp_bias": (hf.get("mlp_bias"), bool(hf.get("mlp_bias"))),
        "hidden_act": (hf.get("hidden_act"), hf.get("hidden_act", "silu") != "silu"),
        "rope_theta": (theta, theta != int(theta)),  # lit's rope_base is an integer
    }
    for field, (value, unsupported) in refused.items():
        if unsupported:
            raise ValueError(
                f"config.json has {field}={value!r}, which lit's Llama cannot represent (it computes plain RoPE "
                "with an integer base, no biases, SiLU): the converted model's outputs would differ from "
                "transformers'. Convert a model without it, or add it to lit_gpt/model.py and lit_gpt/hf.py first."
            )


def _rope_theta(hf: dict) -> float:
    return (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000))
