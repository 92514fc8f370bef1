"""lit_gpt: a Llama-style GPT and the pieces to pretrain, convert and run it (lit-gpt's layout).

`from lit_gpt import GPT, Config, Tokenizer` imports their modules when first asked for, so that importing a light
module such as `lit_gpt.cli` (every entry point's command line, checked before torch is imported) stays light.
"""

import importlib

__all__ = ["GPT", "Config", "Tokenizer"]
_HOMES = {"GPT": "lit_gpt.model", "Config": "lit_gpt.config", "Tokenizer": "lit_gpt.tokenizer"}
# only these: other names are looked up on the package by tools (jsonargparse asks it for an entry function's name,
# `convert`), and a heavy module imported for such a look-up would undo the light command-line check
_PUBLIC_MODULES = ("model", "config", "tokenizer")


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name in _PUBLIC_MODULES:  # `import lit_gpt; lit_gpt.model`, as before the package turned lazy
        return importlib.import_module(f"lit_gpt.{name}")
    raise AttributeError(f"module 'lit_gpt' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
