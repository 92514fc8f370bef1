"""Attention within documents (`GPT.forward(..., eos_id=)`, lit_gpt/documents.py, lit_gpt/attention.py): the CPU
reference path on CPU, the flex-attention and flash-attn-4 variable-length paths on a GPU (`-m gpu`)."""

import pytest
import torch

from lit_gpt.attention import fa4_unsuitable
from lit_gpt.config import Config
from lit_gpt.documents import count_documents, find_documents
from lit_gpt.model import GPT
from lit_gpt.training.parallel import apply_attention

EOS = 3


def tiny_gpt(n_head=4, n_query_groups=2, n_embd=64, seed=0) -> GPT:
    torch.manual_seed(seed)
    config = Config.from_name(
        "micro-llama", n_layer=2, n_head=n_head, n_query_groups=n_query_groups, n_embd=n_embd, intermediate_size=128,
        vocab_size=100, padded_vocab_size=128, block_size=64,
    )  # fmt: skip
    return GPT(config)


def tokens(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(4, 100, (n,), generator=generator)  # never the eos id


def packed_row(generator):
    """[doc A][eos][doc B][eos][doc C] and where B (with its eos) lies in it."""
    a, b, c = tokens(7, generator), tokens(9, generator), tokens(5, generator)
    eos = torch.tensor([EOS])
    row = torch.cat([a, eos, b, eos, c])
    start = len(a) + 1
    return row, torch.cat([b, eos]), slice(start, start + len(b) + 1)


def grads_of_loss_at(model: GPT, idx: torch.Tensor, targets: torch.Tensor, **kwargs) -> dict:
    model.zero_grad()
    model(idx, targets=targets, **kwargs).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("n_query_groups", [4, 2, 1])
@pytest.mark.parametrize("document_positions", [False, True])
def test_document_in_a_packed_row_equals_the_document_alone(n_query_groups, document_positions):
    generator = torch.Generator().manual_seed(n_query_groups)
    model = tiny_gpt(n_query_groups=n_query_groups)
    row, doc, where = packed_row(generator)
    logits = model(row[None], eos_id=EOS, document_positions=document_positions)[0]
    alone = model(doc[None])[0]
    torch.testing.assert_close(logits[where], alone, rtol=0, atol=1e-5)

    # the loss on B's next-token predictions only: the same gradient of every weight as B trained alone
    targets = torch.full_like(row, -100)
    targets[where.start : where.stop - 1] = row[where.start + 1 : where.stop]
    packed = grads_of_loss_at(model, row[None], targets[None], eos_id=EOS, document_positions=document_positions)
    alone_targets = torch.full_like(doc, -100)
    alone_targets[:-1] = doc[1:]
    single = grads_of_loss_at(model, doc[None], alone_targets[None])
    for name in packed:
        torch.testing.assert_close(packed[name], single[name], rtol=0, atol=1e-5, msg=name)


def test_rows_that_start_or_end_mid_document():
    """A row cut out of the stream: its first piece (the end of a document) and its last (the start of one) are
    documents of their own, each equal to that piece run alone."""
    generator = torch.Generator().manual_seed(1)
    model = tiny_gpt()
    head, middle, tail = tokens(6, generator), tokens(8, generator), tokens(10, generator)
    eos = torch.tensor([EOS])
    row = torch.cat([head, eos, middle, eos, tail])  # head: an earlier document's end; tail: the next one's start
    other = torch.cat([tokens(12, generator), eos, tokens(13, generator)])  # a second row of the batch
    batch = torch.stack([row, other])
    logits = model(batch, eos_id=EOS)
    torch.testing.assert_close(logits[0, :7], model(torch.cat([head, eos])[None])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, -10:], model(tail[None])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], model(other[None], eos_id=EOS)[0], rtol=0, atol=1e-5)  # rows apart


def test_no_attention_crosses_an_eos():
    """Changing one document changes no output of another, before or after it; without the mask it does."""
    generator = torch.Generator().manual_seed(2)
    model = tiny_gpt()
    row, _, where = packed_row(generator)
    changed = row.clone()
    changed[: where.start - 1] = tokens(where.start - 1, generator)  # doc A, not its eos
    changed[where.stop :] = tokens(len(row) - where.stop, generator)  # doc C
    a, b = (model(r[None], eos_id=EOS)[0, where] for r in (row, changed))
    assert torch.equal(a, b)
    a, b = (model(r[None])[0, where] for r in (row, changed))
    assert (a - b).abs().max() > 1e-3


def test_without_eos_id_the_forward_pass_is_todays(monkeypatch):
    """No eos_id: no document work, and the attention kernel called as before (bitwise the same output)."""
    model = tiny_gpt()
    idx = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(3))
    expected = model(idx)
    monkeypatch.setattr("lit_gpt.model.find_documents", lambda *a, **k: pytest.fail("documents without eos_id"))
    calls = []
    for block in model.transformer.h:
        kernel = block.attn.attention
        block.attn.attention = lambda *args, kernel=kernel: calls.append(len(args)) or kernel(*args)
    assert torch.equal(model(idx), expected)
    assert calls == [4, 4]  # q, k, v, scale: no documents argument


def test_documents_of_a_batch():
    idx = torch.tensor([[5, EOS, 6, 7, EOS, 8], [EOS, 9, 9, 9, 9, EOS]])
    docs = find_documents(idx, EOS, max_documents=8)
    assert docs.ids.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]]
    assert docs.positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    # starts in the flattened 12 tokens, padded with empty documents up to the bound
    assert docs.cu_seqlens().tolist() == [0, 2, 5, 6, 7, 12, 12, 12, 12]
    assert count_documents(idx, EOS, multiple=1) == 5  # the eos at a row's end starts no document in it
    assert count_documents(idx, EOS) == 64
    assert find_documents(idx, EOS).cu_seqlens().tolist() == [0, 2, 5, 6, 7, 12]  # counted on the device


def test_a_bound_below_the_document_count_is_refused_not_merged():
    """nonzero_static keeps the first `max_documents` starts: a bound too small would join the last documents."""
    idx = torch.tensor([[5, EOS, 6, EOS, 7, EOS, 8, 9]])  # 4 documents
    assert find_documents(idx, EOS, max_documents=4).cu_seqlens().tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="max_documents is below the number of documents in the batch"):
        find_documents(idx, EOS, max_documents=2).cu_seqlens()


def test_an_eos_id_that_is_no_token_is_refused_not_a_causal_pass():
    """No position ever equals it: the pass would have been the causal one without a word; so would it have been
    with document_positions and no eos_id."""
    model = tiny_gpt()
    for eos_id in (-1, 128, 10**9):
        with pytest.raises(ValueError, match=rf"eos_id {eos_id} is not a token id of the model \(0..127\)"):
            model(torch.tensor([[5, 6]]), eos_id=eos_id)
    with pytest.raises(ValueError, match="document_positions restarts the positions at each document: pass the eos_id"):
        model(torch.tensor([[5, 6]]), document_positions=True)  # it was the causal pass with positions through the row


def test_the_kv_cache_path_refuses_a_document_mask():
    model = tiny_gpt()
    model.set_kv_cache(1)
    with pytest.raises(ValueError, match="whole sequences"):
        model(torch.tensor([[5, 6]]), input_pos=torch.arange(2), eos_id=EOS)


########################
# GPU: flex attention (sdpa on CUDA) and flash-attn-4's variable-length kernels against the CPU reference
########################


def reference_and_gpu(kernel: str, document_positions: bool):
    generator = torch.Generator().manual_seed(4)
    model = tiny_gpt(n_head=8, n_query_groups=2, n_embd=512)  # head size 64, as TinyLlama's
    rows = []
    for _ in range(3):  # documents of many lengths, a row ending mid-document
        pieces = []
        while sum(len(p) for p in pieces) < 64:
            pieces += [tokens(int(torch.randint(1, 30, (1,), generator=generator)), generator), torch.tensor([EOS])]
        rows.append(torch.cat(pieces)[:64])
    idx = torch.stack(rows)
    targets = torch.roll(idx, -1, dims=1)
    ref = {}
    loss = model(idx, targets=targets, eos_id=EOS, document_positions=document_positions)
    loss.backward()
    ref = {"loss": loss.detach(), **{n: p.grad.clone() for n, p in model.named_parameters()}}
    logits_ref = model(idx, eos_id=EOS, document_positions=document_positions)

    gpu = model.to("cuda", torch.bfloat16)
    gpu.zero_grad()
    apply_attention(gpu, kernel)
    idx, targets = idx.cuda(), targets.cuda()
    bound = count_documents(idx.cpu(), EOS)
    loss = gpu(idx, targets=targets, eos_id=EOS, document_positions=document_positions, max_documents=bound)
    loss.backward()
    out = {"loss": loss.detach().float().cpu(), **{n: p.grad.float().cpu() for n, p in gpu.named_parameters()}}
    logits = gpu(idx, eos_id=EOS, document_positions=document_positions, max_documents=bound).float().cpu()
    return logits_ref, logits, ref, out


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["sdpa", "fa4"])
@pytest.mark.parametrize("document_positions", [False, True])
def test_gpu_document_kernels_follow_the_cpu_reference(kernel, document_positions):
    config = tiny_gpt(n_head=8, n_embd=512).config
    if kernel == "fa4" and (reason := fa4_unsuitable(config, torch.device("cuda"), "bf16-true")):
        pytest.skip(reason)
    logits_ref, logits, ref, out = reference_and_gpu(kernel, document_positions)
    torch.testing.assert_close(logits, logits_ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=0.01, atol=0.01)
    for name in ref:
        scale = ref[name].abs().max().clamp_min(1e-6)
        assert (out[name] - ref[name]).abs().max() / scale < 0.05, name
