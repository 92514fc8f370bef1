"""On the GPU machine: random-initialized base checkpoints for the LoRA comparison, one in this project's layout
(`<root>/ours`) and one in litgpt's (`<root>/litgpt`: its own initialization, `model_config.yaml`, fused qkv in
its order), both with the same tokenizer, and the instruction records unpacked to `<root>/inst.json`. A random base
is enough for throughput: the step's work does not depend on the weights' values."""

import json
import lzma
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import save_tokenizer_files  # noqa: E402
from lit_gpt.data.separators import Separators, write_separators  # noqa: E402
from lit_gpt.model import GPT, init_weights  # noqa: E402
from lit_gpt.weights import save_lit_checkpoint  # noqa: E402


def main(
    instructions: Path,
    tokenizer_dir: Path,
    root: Path = Path("/tmp/ck"),
    model_name: str = "tiny-llama-1.1b",
    litgpt_model_name: str = "tiny-llama-1.1b",
    device: str = "cuda",
) -> None:
    """Write `root/ours`, `root/litgpt` and `root/inst.json`.

    Args:
        instructions: The `.json.xz` records of `instruction_data.py`.
        tokenizer_dir: A tokenizer folder with `tokenizer.model` and `tokenizer_config.json` (litgpt reads both).
        root: Where the three go.
        model_name: This project's registry name of the base.
        litgpt_model_name: litgpt's name of the same architecture.
        device: Where the weights are initialized (`cpu` to try this without a GPU, with small models).
    """
    ours, theirs = root / "ours", root / "litgpt"
    for d in (ours, theirs):
        d.mkdir(parents=True, exist_ok=True)
    with lzma.open(instructions, "rt", encoding="utf-8") as f:
        (root / "inst.json").write_text(json.dumps(json.load(f)), encoding="utf-8")

    config = Config.from_name(model_name)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    state_dict = {k: v.to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    del model
    save_tokenizer_files(tokenizer_dir, ours, config.block_size, add_bos_token=True)
    write_separators(ours, Separators(bos=True, eos=False))  # TinyLlama's convention
    save_lit_checkpoint(state_dict, config, ours)

    from litgpt.config import Config as LitgptConfig
    from litgpt.model import GPT as LitgptGPT
    from litgpt.utils import save_config

    litgpt_config = LitgptConfig.from_name(litgpt_model_name)
    with torch.device(device):
        litgpt_model = LitgptGPT(litgpt_config).to(torch.bfloat16)
    torch.save({k: v.cpu() for k, v in litgpt_model.state_dict().items()}, theirs / "lit_model.pth")
    save_config(litgpt_config, theirs)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_dir) / name, theirs / name)
    print(f"Wrote {ours} ({', '.join(sorted(p.name for p in ours.iterdir()))}), {theirs} and {root / 'inst.json'}")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
