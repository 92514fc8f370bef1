import pytest
import torch

from lit_gpt.config import Config, list_names, name_to_config
from lit_gpt.model import GPT


def test_tiny_llama_is_tinyllama():
    c = Config.from_name("tiny-llama-1.1b")
    assert (c.block_size, c.vocab_size, c.padded_vocab_size) == (2048, 32000, 32000)
    assert (c.n_layer, c.n_head, c.n_query_groups, c.n_embd, c.intermediate_size) == (22, 32, 4, 2048, 5632)
    assert (c.norm_class_name, c.norm_eps, c.mlp_class_name) == ("RMSNorm", 1e-5, "LLaMAMLP")
    assert (c.rotary_percentage, c.rope_base, c.bias, c.parallel_residual) == (1.0, 10000, False, False)
    assert c.head_size == 64 and c.rope_n_elem == 64


def test_tiny_llama_parameter_count():
    with torch.device("meta"):
        model = GPT(Config.from_name("tiny-llama-1.1b"))
    assert sum(p.numel() for p in model.parameters()) == 1_100_048_384
    # untied embeddings
    assert model.lm_head.weight is not model.transformer.wte.weight


@pytest.mark.parametrize("name", ["micro-llama", "tiny-llama-1.1b-chat", "Llama-2-7b-hf", "Llama-2-13b-hf"])
def test_registry_names(name):
    assert Config.from_name(name).name == name


def test_llama2_70b_uses_gqa():
    c = Config.from_name("Llama-2-70b-hf")
    assert c.n_query_groups == 8 and c.n_head == 64


def test_micro_llama_is_small_with_the_same_vocab():
    c = Config.from_name("micro-llama")
    assert c.vocab_size == 32000 and c.norm_class_name == "RMSNorm" and c.mlp_class_name == "LLaMAMLP"
    assert 1 < c.n_query_groups < c.n_head
    with torch.device("meta"):
        n = sum(p.numel() for p in GPT(c).parameters())
    assert 2e6 < n < 20e6


def test_lookup_by_hf_name_and_overrides():
    c = Config.from_name("TinyLlama-1.1B-intermediate-step-1431k-3T", block_size=512)
    assert c.name == "tiny-llama-1.1b" and c.block_size == 512
    assert c.hf_repo_id == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
    assert Config.from_name("Llama-2-7b-hf").hf_repo_id == "meta-llama/Llama-2-7b-hf"
    # the overrides and changes to the returned config do not reach the registry
    c.hf_config["name"] = "changed"
    assert Config.from_name("tiny-llama-1.1b").block_size == 2048
    assert Config.from_name("tiny-llama-1.1b").hf_repo_id == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="tiny-llama-1.1b"):
        Config.from_name("tiny-lama-1.1b")
    # Llama 2's lit names are the hub's: each was suggested twice
    with pytest.raises(
        ValueError,
        match="Did you mean: Llama-2-7b-hf, Llama-2-70b-hf, Llama-2-13b-hf, Llama-3.2-3B, Llama-3.2-1B[?]",
    ):
        Config.from_name("Llama-2-7b")


def test_listed_names_are_the_names_from_name_takes():
    # the listing that `python scripts/download.py` prints and the unknown-name error points to
    rows = [line.split() for line in list_names().splitlines()]
    assert [row[0] for row in rows] == list(name_to_config)
    assert {"micro-llama", "tiny-llama-1.1b"} <= {row[0] for row in rows}
    for name, *repo_id in rows:
        assert Config.from_name(name).hf_repo_id == (repo_id[0] if repo_id else ""), name


def test_file_round_trip(tmp_path):
    for name in name_to_config:
        c = Config.from_name(name)
        c.to_file(tmp_path / "lit_config.json")
        assert Config.from_file(tmp_path / "lit_config.json") == c
