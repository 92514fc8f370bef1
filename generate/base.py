"""Generate text from a lit checkpoint directory, with the KV cache.

    python generate/base.py --checkpoint_dir checkpoints/lit-tiny-llama-1.1b --prompt "The capital of France is"

Prints each sample's text on stdout and its speed (tokens/s) on stderr. `--temperature 0` decodes greedily. A model
finetuned on instructions (finetune/lora.py, finetune/full.py) answers when asked in the template it was trained with:

    python generate/base.py --checkpoint_dir out/lora-merged --template alpaca --prompt "Name the capital of France."
"""

import sys
import time
from pathlib import Path
from typing import Literal, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import UserError, check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.data.instruct import TemplateName, apply_template  # noqa: E402
from lit_gpt.data.separators import encode_prompt, read_separators, stop_ids  # noqa: E402
from lit_gpt.generate import generate, load_model  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.weights import lit_checkpoint_files  # noqa: E402


def main(
    checkpoint_dir: Path,
    prompt: str = "Hello, my name is",
    num_samples: int = 1,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: Optional[int] = 200,
    precision: Optional[Literal["32-true", "bf16-true", "16-true"]] = None,
    seed: int = 1234,
    template: Optional[TemplateName] = None,
    input: str = "",
) -> None:
    """Generate text samples from a prompt.

    Args:
        checkpoint_dir: A lit checkpoint directory (`lit_config.json`, `lit_model.pth`, tokenizer files), as
            written by `scripts/convert_pretrained_checkpoint.py` or `scripts/convert_hf_checkpoint.py`.
        prompt: The text to continue. It is preceded by the token that preceded every document in training: bos,
            or eos for a model trained on documents with eos after each alone (the checkpoint's `separators.json`,
            see `lit_gpt/data/separators.py`).
        num_samples: How many samples to draw, one after the other.
        max_new_tokens: The most tokens to generate per sample; a sample also stops at the eos token, and for a model
            pretrained with bos alone before each document (TinyLlama's convention) at bos: a next document began.
        temperature: Softmax temperature; higher is more random, 0 is greedy decoding.
        top_k: Sample among the `top_k` most likely tokens only; `--top_k null` samples from every token.
        precision: Weights and compute dtype; by default bf16-true on a GPU that supports it, else 32-true.
        seed: Random seed of the sampling.
        template: Put the prompt into this instruction template (`alpaca` or `plain`, as `lit_gpt/data/instruct.py`
            writes them), as the finetuning scripts' `--template` did, and print only the response. Default: the
            prompt is plain text to continue.
        input: With `--template`: the instruction's input (context), as the records' `input` in finetuning.
    """
    if temperature < 0:
        raise ValueError(f"--temperature {temperature} must not be negative (0 decodes greedily)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top_k {top_k} must be at least 1; pass --top_k null to sample from every token")
    if max_new_tokens < 0:
        raise ValueError(f"--max_new_tokens {max_new_tokens} must not be negative")
    if num_samples < 1:  # it was said with --max_new_tokens, which was not wrong
        raise ValueError(f"--num_samples {num_samples} must be at least 1 (the texts generated from the prompt)")
    for flag, text in (("--prompt", prompt), ("--input", input)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{flag} holds bytes that are not UTF-8 text (at character {e.start}); pass it in UTF-8"
            ) from None
    if input and template is None:
        raise ValueError("--input is the input of an instruction in --template; give --template too")
    if precision is None:
        precision = "bf16-true" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    config, _ = lit_checkpoint_files(checkpoint_dir)  # a missing or incomplete checkpoint says so before the tokenizer
    fabric = L.Fabric(devices=1, precision=precision)
    tokenizer = Tokenizer(checkpoint_dir)
    # with --template, the prompt is the one finetuning put before each response (lit_gpt/data/instruct.py)
    text = prompt if template is None else apply_template(template, prompt, input)
    # the prompt starts as the training documents did: after bos, or after eos (lit_gpt/data/separators.py); before the
    # weights are read, so that a separators.json or tokenizer that cannot give it says so at once
    separators = read_separators(checkpoint_dir)
    # a special token's spelling in an instruction was text in the examples finetuning encoded; a plain prompt's is the
    # token, as transformers reads a prompt
    prompt_ids = encode_prompt(tokenizer, text, separators, parse_special=template is None)
    if max(prompt_ids, default=-1) >= config.padded_vocab_size:  # the model would fail on it (IndexError)
        raise UserError(
            f"the prompt encodes to token id {max(prompt_ids)} with the tokenizer in {checkpoint_dir}, but its model "
            f"has embeddings for {config.padded_vocab_size:,} ids (its padded_vocab_size): the tokenizer files there "
            "are not the model's. Put back the tokenizer the model was trained with"
        )
    t0 = time.perf_counter()
    model = load_model(fabric, checkpoint_dir)
    fabric.print(f"Loaded {model.config.name} in {time.perf_counter() - t0:.2f}s ({precision})", file=sys.stderr)

    if model.config.padded_vocab_size > tokenizer.vocab_size:
        fabric.print(
            f"Note: the model has {model.config.padded_vocab_size} token ids, the tokenizer in {checkpoint_dir} "
            f"{tokenizer.vocab_size}; only the tokenizer's are sampled. That is right for a model trained with this "
            "tokenizer; one trained with another needs to be converted with that one.",
            file=sys.stderr,
        )
    encoded = torch.tensor(prompt_ids, dtype=torch.int32, device=fabric.device)
    L.seed_everything(seed, verbose=False)
    for i in range(num_samples):
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = generate(
            model,
            encoded,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=stop_ids(tokenizer, separators),
            vocab_size=tokenizer.vocab_size,
        )
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter() - t0
        fabric.print(tokenizer.decode(y if template is None else y[encoded.size(0) :]))
        new_tokens = y.size(0) - encoded.size(0)
        fabric.print(f"Sample {i + 1}: {new_tokens} tokens in {t:.2f}s, {new_tokens / t:.2f} tokens/s", file=sys.stderr)


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(main)
