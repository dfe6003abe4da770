"""Batches: right-padded, or packed several documents to a row without attention across them.

Padded batches carry an `attention_mask`. Packed rows carry `position_ids` that restart at 0 for each
document and no attention mask: transformers then builds a block-diagonal causal mask from the
position ids (sdpa and eager alike), so no token attends across a document boundary.
Padding is masked by position (labels -100 past each row's length), never by comparing ids with
the pad id, so EOS == pad cannot hide the stop token from the loss.
"""

from __future__ import annotations

import torch

from posttrain.data.render import IGNORE, Rendered


def pad_batch(rows: list[Rendered], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Returns input_ids, attention_mask, labels, each (B, T)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_rows(rows: list[Rendered], max_len: int) -> list[list[int]]:
    """Group example indices into rows of at most `max_len` tokens, whole documents only (`pack_lengths` on
    the examples' lengths)."""
    return pack_lengths([len(r.input_ids) for r in rows], max_len)


def pack_lengths(lengths: list[int], max_len: int) -> list[list[int]]:
    """Group item indices into rows of at most `max_len` tokens, whole items only (an item is an example, or
    a preference pair whose two sequences must share a row).

    First-fit over the examples sorted longest first (ties by index): deterministic, and close to the
    fewest rows. Returns the groups in order of their first (longest) example. An example longer than
    `max_len` gets a row of its own.

    The first row with room is found in a max-tree over the rows' free space (rows not opened yet count
    as empty), so packing n examples costs O(n log n), not the O(n x rows) of scanning every open row:
    220,000 corpus documents pack in seconds instead of about 20 minutes, into the same rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < len(lengths):
        size *= 2
    free = [max_len] * (2 * size)  # free[node]: the most free space of any row under node; leaves size..
    groups: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n <= free[1]:
            node = 1
            while node < size:  # descend to the leftmost row with room
                node = 2 * node if free[2 * node] >= n else 2 * node + 1
            g = node - size
        else:
            g = len(groups)
        if g == len(groups):
            groups.append([])
        groups[g].append(i)
        node = g + size
        free[node] -= n
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return groups


def packed_batch(groups: list[list[Rendered]], pad_id: int, pad_to: int = 0,
                 doc_ids: bool = False) -> dict[str, torch.Tensor]:
    """Concatenate each group's documents into one row. Returns input_ids, position_ids, labels (B, T), and
    with `doc_ids` also doc_ids (B, T): each position's document, numbered 0, 1, ... in the order of `groups`
    (row by row), -1 on padding (what `models.forward.sequence_logps` sums over).

    The first token of each document gets label -100 (nothing before it in its document predicts it), so
    after the shift no document is trained to predict the next one's first token. Trailing padding gets
    position ids that continue the last document: harmless under the causal mask, and labels -100.
    `pad_to` fixes the width (static shapes for torch.compile).
    """
    width = max(pad_to, max(sum(len(r.input_ids) for r in g) for g in groups))
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    docs = torch.full((len(groups), width), -1, dtype=torch.long)
    d = 0
    for b, group in enumerate(groups):
        t = 0
        for r in group:
            n = len(r.input_ids)
            ids[b, t : t + n] = torch.tensor(r.input_ids)
            labels[b, t : t + n] = torch.tensor([IGNORE] + r.labels[1:])
            pos[b, t : t + n] = torch.arange(n)
            docs[b, t : t + n] = d
            t, d = t + n, d + 1
        if t < width:
            last = pos[b, t - 1].item() if t else -1
            pos[b, t:] = torch.arange(last + 1, last + 1 + width - t)
    out = {"input_ids": ids, "position_ids": pos, "labels": labels}
    return {**out, "doc_ids": docs} if doc_ids else out
