"""The Llama-style GPT, in plain PyTorch.

Pre-norm blocks, rotary position embeddings, grouped-query attention (`scaled_dot_product_attention` unless
`lit_gpt/attention.py` sets another kernel), SwiGLU MLP, RMSNorm, untied output head. State-dict names and layouts are
lit-gpt's, so `lit_model.pth` files move between the two projects. Sharding, mixed precision and compilation are
applied from outside (see `lit_gpt/training/parallel.py`); nothing here knows about them.
"""

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt.attention import sdpa
from lit_gpt.config import Config
from lit_gpt.documents import find_documents
from lit_gpt.hf import fuse_litgpt_qkv
from lit_gpt.loss import cross_entropy, fused_linear_cross_entropy


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.bias)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=build_norm(config),
            )
        )
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        if config.tie_embeddings:  # one parameter: the head reads the embedding's weight
            self.lm_head.weight = self.transformer.wte.weight
        self.mask_cache: Optional[torch.Tensor] = None
        self._max_seq_length = config.block_size
        # with targets: True computes the loss chunk by chunk without materializing the logits (lit_gpt/loss.py),
        # False uses the plain `lm_head` + `F.cross_entropy`; None picks fused on CUDA, where it saves memory and
        # time, and plain elsewhere, where it is the faster of the two (~15x on CPU)
        self.fused_loss: Optional[bool] = None
        # builds what the attention kernel reads for a document mask (set with the kernel by
        # `lit_gpt.training.parallel.apply_attention`)
        self.prepare_documents = sdpa.prepare
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPT":
        """lit-gpt's shorthand for `GPT(Config.from_name(name, **overrides))`."""
        return cls(Config.from_name(name, **overrides))

    @property
    def max_seq_length(self) -> int:
        """The longest sequence `forward` takes and the length of the KV cache `set_kv_cache` makes (lit-gpt's name):
        the block size unless set shorter, for inference on short sequences with a smaller cache."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if not 0 < value <= self.config.block_size:
            raise ValueError(f"max_seq_length {value} must be between 1 and the block size {self.config.block_size}")
        self._max_seq_length = value

    def tied_weights(self) -> Dict[str, str]:
        """The state-dict names under which this model holds a weight that it also holds under another name, each with
        that other name, the weight's own: a tied head (`tie_embeddings`) is the token embedding. A sharded training
        checkpoint stores each such weight once, under its own name (`lit_gpt/training/checkpoint.py`)."""
        return {"lm_head.weight": "transformer.wte.weight"} if self.config.tie_embeddings else {}

    def reset_parameters(self) -> None:
        """(Re)build the rotary cache; call after materializing a model created on the meta device."""
        device = self.lm_head.weight.device
        cos, sin = build_rope_cache(
            self.config.block_size,
            self.config.rope_n_elem,
            base=self.config.rope_base,
            device=device,
            adjustments=self.config.rope_adjustments,
        )
        self.cos, self.sin = cos, sin

    def _apply(self, fn, *args, **kwargs):
        # a model materialized from the meta device (`to_empty`) gets a real rope cache, not uninitialized memory
        was_meta = self.cos.device.type == "meta"
        module = super()._apply(fn, *args, **kwargs)
        if self.config.tie_embeddings and self.lm_head.weight is not self.transformer.wte.weight:
            # `nn.Module._apply` gives each module a Parameter of its own when the tensor changes kind (meta -> CPU in
            # `to_empty`): the head would train apart from the embedding and be saved as a second weight
            self.lm_head.weight = self.transformer.wte.weight
        if was_meta and self.cos.device.type != "meta":
            self.reset_parameters()
        return module

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        eos_id: Optional[int] = None,
        document_positions: bool = False,
        max_documents: Optional[int] = None,
        z_loss: float = 0.0,
    ) -> torch.Tensor:
        """Logits (B, T, padded_vocab_size) for token ids `idx` (B, T), or with `targets` (B, T) the mean
        next-token cross-entropy (targets equal to -100 are ignored), plus `z_loss` × the mean log²Z of the output
        softmax (`lit_gpt.loss`).

        With `input_pos` (T,), the positions of `idx` in the sequence, attention reads and updates the KV cache
        set by `set_kv_cache`; without it, `idx` is a whole sequence from position 0.

        With `eos_id`, each position attends only to the positions of its own document, a document ending with (and
        including) each `eos_id` token (`lit_gpt/documents.py`); `document_positions` restarts the rotary positions
        at 0 at each document instead of counting on through the row. `max_documents` (`count_documents`), a bound
        on the documents of the batch, spares the variable-length kernels a read of the count from the device (a bound
        below the count stops them with an error, on the device).
        """
        T = idx.size(1)
        if T > self.max_seq_length:
            what = "the block size" if self.max_seq_length == self.config.block_size else "max_seq_length"
            raise ValueError(f"Cannot forward a sequence of length {T}: {what} is {self.max_seq_length}")
        documents = None
        if eos_id is not None and not 0 <= eos_id < self.config.padded_vocab_size:  # no token would end a document
            raise ValueError(f"eos_id {eos_id} is not a token id of the model (0..{self.config.padded_vocab_size - 1})")
        if document_positions and eos_id is None:
            raise ValueError("document_positions restarts the positions at each document: pass the eos_id ending one")
        if input_pos is not None:
            if self.mask_cache is None:
                raise TypeError("Call `model.set_kv_cache(batch_size)` before passing `input_pos`")
            if eos_id is not None:
                raise ValueError("A document mask (eos_id) applies to whole sequences, not to the KV-cache path")
            cos = self.cos.index_select(0, input_pos)
            sin = self.sin.index_select(0, input_pos)
            mask = self.mask_cache.index_select(2, input_pos)
        else:
            cos, sin, mask = self.cos[:T], self.sin[:T], None
            if eos_id is not None:
                docs = find_documents(idx, eos_id, max_documents)
                if document_positions:  # (B, T, n_elem): each row its own positions
                    cos, sin = self.cos[docs.positions], self.sin[docs.positions]
                documents = self.prepare_documents(docs)

        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            if documents is None:
                x = block(x, cos, sin, mask, input_pos)
            else:
                x = block(x, cos, sin, mask, input_pos, documents)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x)
        fused = x.is_cuda if self.fused_loss is None else self.fused_loss
        if fused and self.lm_head.bias is None:
            return fused_linear_cross_entropy(x, self.lm_head.weight, targets, z_loss=z_loss)
        return cross_entropy(self.lm_head(x), targets, z_loss=z_loss)

    def set_kv_cache(
        self,
        batch_size: int,
        rope_cache_length: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        max_seq_length: Optional[int] = None,
    ) -> None:
        """A KV cache of `max_seq_length` positions (by default `self.max_seq_length`) in every block, for `forward`
        with `input_pos`. The positional arguments are lit-gpt's: `rope_cache_length`, the width of the rotated part
        of a key as the rotary cache makes it (by default its width, which is `rope_n_elem` rounded up to even)."""
        max_seq_length = max_seq_length or self.max_seq_length
        rope_cache_length = rope_cache_length or self.cos.size(-1)
        device = device or self.lm_head.weight.device
        dtype = dtype or self.lm_head.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(self.config, batch_size, max_seq_length, device, dtype, rope_cache_length)
        ones = torch.ones((max_seq_length, max_seq_length), device=device, dtype=torch.bool)
        self.mask_cache = torch.tril(ones).unsqueeze(0).unsqueeze(0)  # 1, 1, T_max, T_max

    def clear_kv_cache(self) -> None:
        self.mask_cache = None
        for block in self.transformer.h:
            block.attn.kv_cache = None


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.norm_1 = build_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = build_norm(config)
        self.mlp = LLaMAMLP(config) if config.mlp_class_name == "LLaMAMLP" else GptNeoxMLP(config)
        self.parallel_residual = config.parallel_residual
        self.post_norm = config.norm_placement == "post"

    def forward(self, x, cos, sin, mask=None, input_pos=None, documents=None) -> torch.Tensor:
        if self.post_norm:  # OLMo 2: the norms on the outputs of attention and MLP, inside the residual
            x = x + self.norm_1(self.attn(x, cos, sin, mask, input_pos, documents))
            return x + self.norm_2(self.mlp(x))
        h = self.attn(self.norm_1(x), cos, sin, mask, input_pos, documents)
        if self.parallel_residual:
            return x + h + self.mlp(self.norm_2(x))
        x = x + h
        return x + self.mlp(self.norm_2(x))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        # q, k and v of all heads in one matmul, laid out per query group: [q x q_per_kv, k, v] x n_query_groups
        shape = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.attn = nn.Linear(config.n_embd, shape, bias=config.bias or config.attn_bias)
        if config.norm_qk == "head":  # one weight of head_size shared by the heads (Qwen3)
            self.norm_q = RMSNorm(config.head_size, eps=config.norm_eps)
            self.norm_k = RMSNorm(config.head_size, eps=config.norm_eps)
        elif config.norm_qk == "full":  # over all heads' queries, all groups' keys (OLMo 2)
            self.norm_q = RMSNorm(config.n_head * config.head_size, eps=config.norm_eps)
            self.norm_k = RMSNorm(config.n_query_groups * config.head_size, eps=config.norm_eps)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        self.kv_cache: Optional[KVCache] = None
        # causal attention over a whole sequence, (B, T, heads, head_size) in and out: SDPA unless
        # `lit_gpt.training.parallel.apply_attention` sets another kernel
        self.attention = sdpa
        self.config = config

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # litgpt >= 0.5 names the fused projection `qkv` and lays it out as [all q, all k, all v]
        for attr in ("weight", "bias"):
            if (key := f"{prefix}qkv.{attr}") in state_dict:
                state_dict[f"{prefix}attn.{attr}"] = fuse_litgpt_qkv(state_dict.pop(key), self.config)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, cos, sin, mask=None, input_pos=None, documents=None) -> torch.Tensor:
        B, T, _ = x.size()
        C = self.config
        q_per_kv = C.n_head // C.n_query_groups
        qkv = self.attn(x)
        qkv = qkv.view(B, T, C.n_query_groups, q_per_kv + 2, C.head_size)
        q, k, v = qkv.split((q_per_kv, 1, 1), dim=3)
        # (B, T, heads, head_size) in memory: attention reads it through a transposed view and writes its output in
        # the same layout, so that `y` below reaches `proj` without a copy (and is not saved twice for backward)
        q = q.reshape(B, T, C.n_head, C.head_size)  # query head h belongs to group h // q_per_kv
        k = k.reshape(B, T, C.n_query_groups, C.head_size)
        # a compact copy: as a view, v (or k), saved by attention for backward, would keep all of `qkv` alive
        v = v.reshape(B, T, C.n_query_groups, C.head_size).contiguous()
        if C.norm_qk == "head":
            q, k = self.norm_q(q), self.norm_k(k)
        elif C.norm_qk == "full":
            q = self.norm_q(q.reshape(B, T, -1)).view(B, T, C.n_head, C.head_size)
            k = self.norm_k(k.reshape(B, T, -1)).view(B, T, C.n_query_groups, C.head_size)

        # (T, 1, n_elem), or (B, T, 1, n_elem) with positions per document: broadcast over the heads
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        q = apply_rope(q, cos, sin, C.rope_n_elem)
        k = apply_rope(k, cos, sin, C.rope_n_elem).contiguous()
        scale = 1.0 / math.sqrt(C.head_size)
        if input_pos is None and documents is None:  # the kernel set by `lit_gpt.training.parallel.apply_attention`
            y = self.attention(q, k, v, scale)
        elif input_pos is None:  # attention within documents, from what the kernel's `prepare` built
            y = self.attention(q, k, v, scale, documents)
        else:
            if self.kv_cache is None:
                raise TypeError("Call `model.set_kv_cache(batch_size)` before passing `input_pos`")
            k, v = self.kv_cache(input_pos, k.transpose(1, 2), v.transpose(1, 2))
            # grouped-query attention without materializing repeated keys and values
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k, v, attn_mask=mask, scale=scale, enable_gqa=True
            ).transpose(1, 2)
        y = y.reshape(B, T, C.n_head * C.head_size)  # (B, T, n_head, head_size) in memory: no copy
        return self.proj(y)


class LLaMAMLP(nn.Module):
    """SwiGLU: proj(silu(fc_1(x)) * fc_2(x))."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc_1(x), self.fc_2(x)
        # a subclass of nn.Linear (float8 training swaps them in, lit_gpt/training/float8.py) computes its own product
        if type(self.proj) is nn.Linear and self.proj.bias is None and torch.is_grad_enabled():
            return swiglu_linear(a, b, self.proj.weight)
        return self.proj(F.silu(a) * b)


class _SwiGLULinear(torch.autograd.Function):
    """`F.linear(silu(a) * b, weight)` that saves `a` and `b` for backward but not their product, which is
    recomputed there in the same elementwise pass as the SwiGLU gradient: one (tokens, intermediate_size) tensor
    less per layer (8 GB for TinyLlama at micro-batch 16 x 2048) for one extra write of it. No matrix product is
    recomputed."""

    @staticmethod
    def forward(ctx, a, b, weight):
        y = F.linear(F.silu(a) * b, weight)  # autocast, when on, runs this in its dtype
        ctx.save_for_backward(a, b, weight)
        ctx.compute_dtype = y.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        a, b, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_h = grad_y.to(dtype) @ weight.to(dtype)
        acc = torch.promote_types(a.dtype, torch.float32)  # the elementwise math in float32 at least
        a32, b32, grad_h32 = a.to(acc), b.to(acc), grad_h.to(acc)
        sig = torch.sigmoid(a32)
        silu = a32 * sig
        h = (silu * b32).to(dtype)
        grad_a = grad_h32 * b32 * sig * (1 + a32 * (1 - sig))
        grad_b = grad_h32 * silu
        grad_w = None
        if ctx.needs_input_grad[2]:  # a frozen weight (LoRA finetuning) needs no gradient: skip its matmul
            grad_w = (grad_y.reshape(-1, grad_y.size(-1)).to(dtype).t() @ h.reshape(-1, h.size(-1))).to(weight.dtype)
        return grad_a.to(a.dtype), grad_b.to(b.dtype), grad_w


def swiglu_linear(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(F.silu(a) * b, weight)`, keeping less for backward (see `_SwiGLULinear`)."""
    return _SwiGLULinear.apply(a, b, weight)


class GptNeoxMLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class RMSNorm(nn.Module):
    """Root mean square normalization, computed in float32 (https://arxiv.org/abs/1910.07467)."""

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def build_norm(config: Config) -> nn.Module:
    if config.norm_class_name == "RMSNorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps)


class KVCache(nn.Module):
    def __init__(
        self,
        config: Config,
        batch_size: int,
        max_seq_length: int,
        device,
        dtype,
        rope_cache_length: Optional[int] = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, config.n_query_groups, max_seq_length, config.head_size)
        # a key is as wide as its rotated part comes out of `apply_rope` (an odd `rope_n_elem` comes out one wider)
        rotated = config.rope_n_elem if rope_cache_length is None else rope_cache_length
        k_shape = (*shape[:3], config.head_size - config.rope_n_elem + rotated)
        self.register_buffer("k", torch.zeros(k_shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_query_groups, T, head_size) at `input_pos`; return the whole cache."""
        self.k = self.k.to(k.dtype)
        self.v = self.v.to(v.dtype)
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def build_rope_cache(seq_len: int, n_elem: int, base: int = 10000, device=None, adjustments: Optional[dict] = None):
    """cos and sin (seq_len, n_elem) in float32, in the "rotate half" layout that lit-gpt and HF Llama share.

    `adjustments`: Llama 3's frequency scaling (`Config.rope_adjustments`): wavelengths longer than
    original_max_seq_len / low_freq_factor are divided by `factor`, those shorter than
    original_max_seq_len / high_freq_factor kept, those between interpolated."""
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.int64).float() / n_elem))
    if adjustments is not None:
        factor, low, high = adjustments["factor"], adjustments["low_freq_factor"], adjustments["high_freq_factor"]
        original = adjustments["original_max_seq_len"]
        wavelen = 2 * math.pi / theta
        scaled = torch.where(wavelen > original / low, theta / factor, theta)
        smooth = (original / wavelen - low) / (high - low)
        between = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        theta = torch.where(medium, between, scaled)
    seq_idx = torch.arange(seq_len, device=device, dtype=torch.float32)
    idx_theta = torch.outer(seq_idx, theta).repeat(1, 2)
    return torch.cos(idx_theta), torch.sin(idx_theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_elem: int) -> torch.Tensor:
    """Rotate the first `n_elem` channels of x (..., head_size); cos and sin (..., n_elem) broadcast against it:
    (T, n_elem) for x (B, H, T, head_size), (T, 1, n_elem) for x (B, T, H, head_size)."""
    if n_elem < x.size(-1):
        return torch.cat((apply_rope(x[..., :n_elem], cos, sin, n_elem), x[..., n_elem:]), dim=-1)
    half = x.size(-1) // 2  # an odd n_elem: cos and sin are one wider and so is the result, as in lit-gpt
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def init_weights(model: nn.Module, n_layer: int, n_embd: int) -> None:
    """TinyLlama's (GPT-NeoX style) initialization, in place, on whatever device the parameters are.

    Embeddings and linear weights ~ N(0, sqrt(2 / (5 n_embd))); the output projections of attention and of the
    MLP ~ N(0, 1 / sqrt(n_embd) / n_layer); biases 0; norm weights 1.
    """
    std = math.sqrt(2.0 / 5 / n_embd)
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            module.reset_parameters()
    # second pass: modules() visits a parent before its children, so the first pass would overwrite these
    for module in model.modules():
        if isinstance(module, (CausalSelfAttention, LLaMAMLP, GptNeoxMLP)):
            nn.init.normal_(module.proj.weight, mean=0.0, std=1.0 / math.sqrt(n_embd) / n_layer)
    if isinstance(model, GPT):
        model.reset_parameters()
