"""Sequence log-probabilities for preference losses: packed documents == each sequence alone through a plain
forward pass (full logits, log-softmax, gather), to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.collate import pack_lengths, packed_batch
from posttrain.data.render import IGNORE, Renderer
from posttrain.data.types import Conversation, Message
from posttrain.models.forward import sequence_logps
from posttrain.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(tok):
    r = Renderer(tok, 64)
    chats = [("What is 2 + 3?", "2 + 3 = 5."), ("What is 2 + 3?", "It is 6."), ("Reverse the word stone.", "enots"),
             ("Reverse the word stone.", "stone"), ("List 2 words.", "apple, river."), ("List 2 words.", "ocean")]
    return [r.render(Conversation([Message("user", u), Message("assistant", a)])) for u, a in chats]


def _alone(model, row) -> tuple[float, int]:
    """The reference: one sequence, no padding, the full logits, log-softmax, the trained targets gathered."""
    ids = torch.tensor([row.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = torch.tensor(row.labels[1:])
    trained = targets != IGNORE
    return logp[trained].gather(1, targets[trained, None]).sum().item(), int(trained.sum())


def test_packed_sequence_logps_equal_each_sequence_alone(tok, model_dir):
    model = load_model(str(model_dir)).eval()
    rows = _rows(tok)
    pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
    groups = pack_lengths([len(c.input_ids) + len(r.input_ids) for c, r in pairs], 80)  # two pairs share a row
    assert max(len(g) for g in groups) > 1 and len(groups) > 1
    flat = [[doc for i in g for doc in pairs[i]] for g in groups]
    batch = packed_batch(flat, tok.pad_token_id, doc_ids=True)
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, n_docs=len(rows))
    order = [doc for g in groups for i in g for doc in pairs[i]]
    for k, row in enumerate(order):
        want, n = _alone(model, row)
        assert counts[k].item() == n == row.n_trained
        assert sums[k].item() == pytest.approx(want, abs=1e-5)


def test_doc_ids_number_documents_row_by_row_and_mark_padding(tok):
    rows = _rows(tok)
    batch = packed_batch([[rows[0], rows[1]], [rows[2]]], tok.pad_token_id, doc_ids=True)
    docs = batch["doc_ids"]
    n0, n1, n2 = (len(rows[i].input_ids) for i in range(3))
    assert docs[0, :n0].eq(0).all() and docs[0, n0:n0 + n1].eq(1).all()
    assert docs[1, :n2].eq(2).all() and docs[1, n2:].eq(-1).all()
    assert "doc_ids" not in packed_batch([[rows[0]]], tok.pad_token_id)  # SFT batches stay as they were


def test_pack_lengths_is_pack_rows_on_lengths(tok):
    from posttrain.data.collate import pack_rows

    rows = _rows(tok) * 5
    assert pack_rows(rows, 50) == pack_lengths([len(r.input_ids) for r in rows], 50)


def _shared_groups(tok):
    """Three pairs of two responses to one prompt each (the last pair's prompts differ: no stem), two of them in
    one row."""
    rows = _rows(tok)
    r = Renderer(tok, 64)
    odd = (r.render(Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "5")])),
           r.render(Conversation([Message("user", "List 2 words."), Message("assistant", "sky, sea.")])))
    pairs = [(rows[0], rows[1]), (rows[2], rows[3]), odd]
    return pairs, [[pairs[0], pairs[2]], [pairs[1]]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_logps_equal_each_sequence_alone(tok, model_dir, attn):
    """The prompt written once per pair, each response attending to it through the 4-D mask: every response's
    summed log-prob equals the sequence alone through a plain forward, with sdpa (boolean mask) and eager
    (the mask made additive)."""
    from transformers import AutoModelForCausalLM

    from posttrain.data.collate import pair_stem, shared_prompt_batch

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=attn).eval()
    pairs, groups = _shared_groups(tok)
    batch = shared_prompt_batch(groups, tok.pad_token_id)
    widths = [sum(len(a.input_ids) + len(b.input_ids) - pair_stem(a, b) for a, b in g) for g in groups]
    assert batch["input_ids"].shape == (2, max(widths)) and batch["attention_mask"].shape == (2, 1, max(widths), max(widths))
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, n_docs=6)
    for k, row in enumerate(side for g in groups for pair in g for side in pair):
        want, n = _alone(model, row)
        assert counts[k].item() == n == row.n_trained
        assert sums[k].item() == pytest.approx(want, abs=1e-5)


def test_shared_prompt_layout_by_hand(tok):
    """The stem is the shared untrained prefix less its last token; positions count on from it in both segments;
    a response token sees its own pair's stem and segment, never the other response, another pair or padding."""
    from posttrain.data.collate import pair_stem, shared_prefix, shared_prompt_batch

    pairs, groups = _shared_groups(tok)
    (a, b), odd = pairs[0], pairs[2]
    p = shared_prefix(a, b)
    assert a.input_ids[:p] == b.input_ids[:p] and a.labels[p] != IGNORE and a.labels[p - 1] == IGNORE
    assert pair_stem(a, b) == p - 1 and pair_stem(*odd) == shared_prefix(*odd) - 1 < p - 1
    batch = shared_prompt_batch([[pairs[0]]], tok.pad_token_id)
    s, na, nb = p - 1, len(a.input_ids), len(b.input_ids)
    assert batch["input_ids"][0].tolist() == a.input_ids + b.input_ids[s:]
    assert batch["position_ids"][0].tolist() == list(range(na)) + list(range(s, nb))
    assert batch["doc_ids"][0].tolist() == [-1] * s + [0] * (na - s) + [1] * (nb - s)
    mask = batch["attention_mask"][0, 0]
    first_b = na  # b's segment starts after a's
    assert mask[first_b, :s].all() and not mask[first_b, s:na].any() and mask[first_b, first_b]
    assert mask[na - 1, :na].all() and not mask[na - 1, na:].any()
    padded = shared_prompt_batch(groups, tok.pad_token_id)
    row1 = padded["attention_mask"][1, 0]
    used = sum(len(x.input_ids) for x in pairs[1]) - pair_stem(*pairs[1])
    assert not row1[:used, used:].any() and row1[used:, used:].diagonal().all()  # padding seen by no one
