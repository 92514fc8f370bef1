"""Autoregressive sampling with the KV cache, and loading a lit checkpoint directory for inference."""

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from lit_gpt.model import GPT
from lit_gpt.training.fabric import L
from lit_gpt.weights import lit_checkpoint_files, load_lit_state_dict


def load_model(fabric: L.Fabric, checkpoint_dir: Path) -> GPT:
    """`GPT` with the weights of `checkpoint_dir/lit_model.pth` (strict), in `fabric`'s precision, in eval mode."""
    config, model_file = lit_checkpoint_files(checkpoint_dir)
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    model.load_state_dict(load_lit_state_dict(model_file), strict=True)
    model.reset_parameters()  # the rope cache of an empty-initialized model
    return fabric.setup_module(model.eval())


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None) -> torch.Tensor:
    """The next token (1,) from the last position's logits (V,): argmax at temperature 0, else a draw from the
    softmax of logits / temperature restricted to the `top_k` most likely tokens."""
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = torch.where(logits < v[-1], torch.full_like(logits, -float("inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    eos_id: Union[int, Sequence[int], None] = None,
    vocab_size: Optional[int] = None,
) -> torch.Tensor:
    """The prompt (T,) followed by up to `max_new_tokens` generated tokens, stopping after `eos_id` (an id, or
    several: `lit_gpt.data.separators.stop_ids`). With
    `vocab_size` (the tokenizer's), only ids below it are sampled: the model's (padded) vocabulary can be larger than
    the tokenizer's, whose decoding fails on an id it does not have.

    The prompt is processed in one forward pass that fills the KV cache; each new token is one more pass of a
    single position.
    """
    T = prompt.size(0)
    total = T + max_new_tokens
    if total > model.config.block_size:
        fix = (
            f"shorten the prompt to fewer than {model.config.block_size} tokens"
            if T >= model.config.block_size
            else f"shorten the prompt or lower --max_new_tokens to {model.config.block_size - T}"
        )
        raise ValueError(
            f"The prompt ({T} tokens) plus --max_new_tokens {max_new_tokens} exceed the model's block size "
            f"{model.config.block_size}; {fix}"
        )
    stop = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    device = prompt.device
    model.set_kv_cache(batch_size=1, max_seq_length=total, device=device)
    tokens = [prompt]
    input_pos = torch.arange(0, T, device=device)
    x = prompt.view(1, -1)
    for _ in range(max_new_tokens):
        logits = model(x, input_pos)[0, -1, :vocab_size]
        next_token = sample(logits, temperature, top_k).to(prompt.dtype)
        tokens.append(next_token)
        if next_token.item() in stop:
            break
        input_pos = input_pos[-1:] + 1
        x = next_token.view(1, -1)
    model.clear_kv_cache()
    return torch.cat(tokens)
