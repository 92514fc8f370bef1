"""lit_gpt: a Llama-style GPT and the pieces to pretrain, convert and run it (lit-gpt's layout).

`from lit_gpt import GPT, Config, Tokenizer` imports their modules when first asked for, so that importing a light
module such as `lit_gpt.cli` (every entry point's command line, checked before torch is imported) stays light.
"""

import importlib

__all__ = ["GPT", "Config", "Tokenizer"]
_HOMES = {"GPT": "lit_gpt.model", "Config": "lit_gpt.config", "Tokenizer": "lit_gpt.tokenizer"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lit_gpt' has no attribute {name!r}")
