"""LoRA (lit_gpt/lora.py) and the finetuning scripts on CPU: a tiny model taught a synthetic instruction set, merged,
exported and answered through generate/base.py and transformers; resumption after SIGKILL; the adapter checkpoint."""

import copy

import pytest
import torch
from conftest import TEST_LLAMA

from lit_gpt.config import Config
from lit_gpt.hf import split_qkv
from lit_gpt.lora import LoRAConfig, LoRALinear, apply_lora, lora_state_dict, merge_lora
from lit_gpt.model import GPT, init_weights


def tiny_model(seed: int = 0) -> GPT:
    config = Config(**{**TEST_LLAMA, "n_layer": 2})
    torch.manual_seed(seed)
    model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    return model


def randomize_adapters(model: GPT) -> None:
    """B starts at zero (the adapter is then a no-op): give every adapter a nonzero update."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_B.data = torch.randn(module.lora_B.shape, generator=generator) * 0.1


@pytest.mark.parametrize("targets", [("query",), ("key",), ("value",), ("query", "value"), ("query", "key", "value")])
def test_qkv_adapters_update_only_their_projections_rows(targets):
    model = tiny_model()
    lora = LoRAConfig(r=4, **{t: t in targets for t in ("query", "key", "value")})
    apply_lora(model, lora)
    randomize_adapters(model)
    layer = model.transformer.h[0].attn.attn
    changed = layer.delta_weight().abs().sum(dim=1) != 0  # (rows,)
    # the rows of each projection as lit_gpt.hf splits the fused weight for export: an independent account of the
    # layout [q x q_per_kv, k, v] x n_query_groups
    rows = torch.arange(layer.out_features).view(-1, 1)
    q, k, v = (r.flatten() for r in split_qkv(rows, model.config))
    expected = torch.zeros(layer.out_features, dtype=torch.bool)
    for name, index in (("query", q), ("key", k), ("value", v)):
        if name in targets:
            expected[index] = True
    assert torch.equal(changed, expected)
    # each projection has its own rank-r adapter
    assert layer.lora_A.shape == (4 * len(targets), model.config.n_embd)


def test_lora_model_computes_as_its_merged_weights_in_training_and_inference():
    """Every target on (the MLP's output projection included, which the plain model computes through a fused SwiGLU
    when it is an nn.Linear): the adapted model's loss and logits equal those of its merged, ordinary weights."""
    model = tiny_model()
    lora = LoRAConfig(r=4, dropout=0.0, query=True, key=True, value=True, projection=True, mlp=True, head=True)
    n_trainable = apply_lora(model, lora)
    randomize_adapters(model)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    merged = merge_lora(copy.deepcopy(model))
    assert set(merged.state_dict()) == set(tiny_model().state_dict())  # an ordinary GPT
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(x[:, :-1], targets=x[:, 1:])  # grad mode: the path of training
    loss.backward()
    torch.testing.assert_close(loss, merged(x[:, :-1], targets=x[:, 1:]), rtol=1e-5, atol=1e-5)
    base_loss = tiny_model()(x[:, :-1], targets=x[:, 1:])
    assert abs(loss.item() - base_loss.item()) > 1e-3  # the adapters do change the output
    with torch.no_grad():
        torch.testing.assert_close(model(x), merged(x), rtol=1e-4, atol=1e-5)
    # only the adapter gets gradients
    assert all((p.grad is not None) == ("lora_" in n) for n, p in model.named_parameters())


def test_lora_state_dict_holds_only_the_adapter():
    model = tiny_model()
    apply_lora(model, LoRAConfig(r=2, mlp=True))
    adapter = lora_state_dict(model)
    assert adapter and all(k.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for k in adapter)
    # the base weights keep their names, so that a base lit_model.pth loads into the adapted model
    base = tiny_model(seed=3).state_dict()
    missing, unexpected = model.load_state_dict(base, strict=False)
    assert not unexpected and sorted(missing) == sorted(adapter)
