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
