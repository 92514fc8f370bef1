"""MFU from the tokens per second of one device: the training FLOPs of those tokens over the device's bf16 peak."""

import pytest
import torch


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),  # contains "L4" too
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_mfu_of_a_cuda_device(name, peak, monkeypatch):
    from lit_gpt.flops import mfu, peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    device = torch.device("cuda", 0)
    assert peak_flops(device) == peak
    expected = None if peak is None else 3000.0 * 6e9 / peak
    assert mfu(3000.0, 6e9, device) == (pytest.approx(expected) if peak else None)


def test_a_tied_head_costs_the_flops_of_an_untied_one():
    """Llama-3.2-1B ties its head to the embedding: one parameter fewer in the count, the same matrix products."""
    from lit_gpt.config import Config
    from lit_gpt.flops import flops_per_token, num_parameters

    tied = Config.from_name("Llama-3.2-1B", n_layer=2)
    untied = Config.from_name("Llama-3.2-1B", n_layer=2, tie_embeddings=False)
    assert num_parameters(untied) - num_parameters(tied) == 128256 * 2048
    assert flops_per_token(tied, 2048) == flops_per_token(untied, 2048)
