"""lit_gpt: a Llama-style GPT and the pieces to pretrain, convert and run it (lit-gpt's layout)."""

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

__all__ = ["GPT", "Config", "Tokenizer"]
