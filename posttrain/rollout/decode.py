"""posttrain's own decode loop: what `generate` samples with (`transformers`' `model.generate` is kept as the
reference it is tested against: `generate(..., engine="hf")`).

Why its own: on a small model, sampling is framework overhead. `model.generate` rebuilds attention masks and
grows its cache by concatenation at every step, runs logits processors and stopping criteria, and keeps
computing rows that have already stopped until the longest answer of the batch ends. Here:

- **one preallocated KV cache** (layers x rows x kv-heads x (prompt width + budget) x head dim) written in
  place, for the Llama-style decoders (Llama, Qwen2, Mistral: RMSNorm, rotary, grouped-query attention,
  gated MLP). Their modules are called directly with the model's own weights and rotary embedding, so any
  rope scaling the config asks for is the model's own code;
- **continuous batching**: `batch_size` rows decode together; a row that stops hands its slot to the next
  prompt waiting (prefilled at once, its keys and values written into the slot), so the batch stays full
  until the queue runs dry, and only the last rows have a tail. Then the cache is compacted when the rows
  still going fall below `COMPACT_BELOW` of the slots it holds;
- **prefill packs the distinct prompts** end to end (block-diagonal attention, `PACK_TOKENS` at a time): no
  compute on padding, and a prompt sampled n times is computed once;
- **the output head runs on the last position only**, in prefill too;
- any other causal LM runs the loop through its own `forward` with a `DynamicCache`, batch after batch
  (left-padded; stopped rows dropped with `batch_select_indices`), still without the per-step work of
  `generate`.

**Sampling** draws row r's token t by inverse CDF from the uniform number t of a stream seeded by `seeds[r]`
alone, so a sample depends on its prompt, its seed and the model, never on the batch size, on which rows
share its batch, or on the path (fast or generic) that computed it. Greedy decoding gives the same tokens as
`model.generate` (tested on tiny Llama, Qwen2, Mistral, GPT-2 and GPT-NeoX models); sampling draws from the
same per-token distribution (temperature, then top-p as `transformers`' `TopPLogitsWarper`), not from the
same random stream. That is in fp32; in bf16 the two paths' kernels round differently, so a near-tie can go the
other way (60 of 64 greedy answers of the pipeline's SFT model identical). Attention scores of a decode step are
taken in fp32 whatever the model's dtype.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COMPACT_BELOW = 0.75
_FAST_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class Decoded:
    """One row's new tokens: `tokens` (the stop token included when `stopped`), and with log-probs, one float per
    token: log_softmax of the raw logits (temperature 1, before top-p)."""
    tokens: list[int]
    stopped: bool
    logprobs: list[float] | None = None


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (at least one), -inf elsewhere; the same
    rule as `transformers.TopPLogitsWarper` (ties at the boundary resolved the same way: ascending sort)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def fast_path(model, total_len: int) -> bool:
    """Whether `model` is a Llama-style decoder the preallocated-cache loop runs (else the generic loop)."""
    cfg = model.config
    if cfg.model_type not in _FAST_TYPES or not hasattr(model, "model") or not hasattr(model.model, "rotary_emb"):
        return False
    window = getattr(cfg, "sliding_window", None)
    if window is not None and (getattr(cfg, "use_sliding_window", True) and window < total_len):
        return False
    attn = model.model.layers[0].self_attn
    return all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")) and not hasattr(attn, "q_norm")


class _Sampler:
    """Picks the next token of each row from its last position's logits (rows, V). Each row has its own stream
    of `max_new_tokens` uniforms, seeded by its seed; token t of a row uses uniform t."""

    def __init__(self, temperature: float, top_p: float, logprobs: bool, max_new_tokens: int):
        self.temperature, self.top_p, self.logprobs, self.max_new = temperature, top_p, logprobs, max_new_tokens

    def uniforms(self, seeds: list[int]) -> torch.Tensor:
        """(len(seeds), max_new_tokens) uniforms, row i from a generator seeded with seeds[i]."""
        if self.temperature <= 0:
            return torch.zeros(len(seeds), 1)
        return torch.stack([torch.rand(self.max_new, generator=torch.Generator().manual_seed(int(sd)))
                            for sd in seeds])

    def __call__(self, logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits (n, V), u (n,) each row's uniform for this token -> next tokens (n,), their log-probs."""
        logits = logits.float()
        if self.temperature > 0:
            # inverse CDF: one uniform per token (torch.multinomial draws one exponential per vocabulary entry)
            cdf = top_p_filter(logits / self.temperature, self.top_p).softmax(-1).cumsum(-1)
            nxt = torch.searchsorted(cdf, u.to(cdf.device)[:, None] * cdf[:, -1:], right=True)[:, 0]
            nxt = nxt.clamp(max=cdf.shape[1] - 1)
        else:
            nxt = logits.argmax(-1)
        lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0] if self.logprobs else None
        return nxt, lp


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def decode(model, prompts: list[list[int]], pad_id: int, stop_ids: list[int], max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, seeds: list[int] | None = None,
           logprobs: bool = False, batch_size: int | None = None,
           on_done: Callable[[int], None] | None = None) -> list[Decoded]:
    """Continue each prompt (token ids; a prompt may repeat, for n samples) until a stop token or
    `max_new_tokens`, `batch_size` rows at a time (all at once by default). `seeds[r]` seeds row r's sampling
    (default: r). `on_done(k)` is called as k more rows finish (a progress bar)."""
    if any(not p for p in prompts):
        raise ValueError("decode: every prompt needs at least one token")
    if not prompts:
        return []
    if hasattr(model, "get_base_model"):   # a peft model: its base with the adapters injected (and active)
        model = model.get_base_model()
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    batch_size = min(batch_size or len(prompts), len(prompts))
    sampler = _Sampler(temperature, top_p, logprobs, max_new_tokens)
    out = [Decoded([], False, [] if logprobs else None) for _ in prompts]
    stop = torch.tensor(stop_ids)
    on_done = on_done or (lambda k: None)
    if fast_path(model, max(len(p) for p in prompts) + max_new_tokens):
        _decode_slots(model, prompts, seeds, max_new_tokens, batch_size, sampler, stop, out, on_done)
    else:
        for start in range(0, len(prompts), batch_size):
            rows = list(range(start, min(start + batch_size, len(prompts))))
            _decode_batch(model, prompts, seeds, rows, pad_id, max_new_tokens, sampler, stop, out)
            on_done(len(rows))
    return out


def _record(out: list[Decoded], rows: list[int], toks: list[int], lps: list[float] | None) -> None:
    for j, (r, t) in enumerate(zip(rows, toks)):
        out[r].tokens.append(t)
        if lps is not None:
            out[r].logprobs.append(lps[j])


def _decode_batch(model, prompts, seeds, rows: list[int], pad_id: int, max_new: int, sampler: _Sampler,
                  stop: torch.Tensor, out: list[Decoded]) -> None:
    """One left-padded batch through the model's own forward (any causal LM); stopped rows leave it."""
    device = next(model.parameters()).device
    step_fn = _GenericStepper(model, [prompts[r] for r in rows], pad_id, device)
    uniforms = sampler.uniforms([seeds[r] for r in rows])
    live = torch.arange(len(rows))                 # stepper row -> index into rows
    logits = step_fn.prefill()
    for t in range(max_new):
        nxt, lp = sampler(logits, uniforms[live, min(t, uniforms.shape[1] - 1)])
        who = [rows[i] for i in live.tolist()]
        nxt_cpu = nxt.cpu()
        _record(out, who, nxt_cpu.tolist(), lp.tolist() if lp is not None else None)
        done = torch.isin(nxt_cpu, stop)
        for r in (w for w, d in zip(who, done.tolist()) if d):
            out[r].stopped = True
        if bool(done.all()) or t == max_new - 1:
            return
        if done.any():
            keep = (~done).nonzero()[:, 0]
            step_fn.select(keep.to(device))
            live, nxt = live[keep], nxt[keep.to(device)]
        logits = step_fn.step(nxt)


def _decode_slots(model, prompts, seeds, max_new: int, n_slots: int, sampler: _Sampler, stop: torch.Tensor,
                  out: list[Decoded], on_done: Callable[[int], None]) -> None:
    """Continuous batching over `n_slots` slots of one preallocated cache (Llama-style decoders)."""
    device = next(model.parameters()).device
    slots = _LlamaSlots(model, n_slots, max(len(p) for p in prompts) + max_new, device)
    queue = list(range(len(prompts)))[::-1]        # rows still to start, next one last
    row_of = [-1] * n_slots                        # the row each slot decodes (-1: free)
    made = [0] * n_slots                           # tokens the slot's row has made
    uniforms = torch.zeros(n_slots, sampler.uniforms([0]).shape[1])
    logits = torch.zeros(n_slots, model.config.vocab_size, device=device)

    def admit(free: list[int]) -> None:
        taken = [(s, queue.pop()) for s in free if queue]
        if not taken:
            return
        ss, rr = [s for s, _ in taken], [r for _, r in taken]
        logits[ss] = slots.admit(ss, [prompts[r] for r in rr]).to(logits.dtype)
        uniforms[ss] = sampler.uniforms([seeds[r] for r in rr])
        for s, r in taken:
            row_of[s], made[s] = r, 0

    stopping = set(stop.tolist())
    admit(list(range(n_slots)))
    while any(r >= 0 for r in row_of):
        active = [s for s in range(len(row_of)) if row_of[s] >= 0]
        u = uniforms[active, [min(made[s], uniforms.shape[1] - 1) for s in active]]
        nxt, lp = sampler(logits[active], u)
        toks = nxt.tolist()
        _record(out, [row_of[s] for s in active], toks, lp.tolist() if lp is not None else None)
        tokens = torch.full((len(row_of),), 0, dtype=torch.long)
        going, freed = [], []
        for s, t in zip(active, toks):
            made[s] += 1
            if t in stopping:
                out[row_of[s]].stopped = True
            if t in stopping or made[s] == max_new:
                row_of[s] = -1
                freed.append(s)
            else:
                going.append(s)
                tokens[s] = t
        if freed:
            on_done(len(freed))
            slots.free(freed)
            admit(freed)
        if going:
            step_logits = slots.step(tokens.to(device), torch.tensor(going, device=device))
            logits[going] = step_logits[going].to(logits.dtype)
        n_active = sum(r >= 0 for r in row_of)
        if not queue and 0 < n_active < COMPACT_BELOW * len(row_of):
            keep = [s for s in range(len(row_of)) if row_of[s] >= 0]
            slots.select(torch.tensor(keep, device=device))
            row_of, made = [row_of[s] for s in keep], [made[s] for s in keep]
            uniforms, logits = uniforms[keep], logits[keep]


class _GenericStepper:
    """Any causal LM: its own forward on the left-padded batch, with a DynamicCache and a 2-D attention mask."""

    def __init__(self, model, prompts: list[list[int]], pad_id: int, device):
        from transformers import DynamicCache

        self.model = model
        self.ids, self.mask = _left_padded(prompts, pad_id, device)
        self.pos = (self.mask.cumsum(1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=model.config)
        params = inspect.signature(model.forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"  # transformers 5.24 renamed it
        self.with_pos = "position_ids" in params
        self.keep_last = "logits_to_keep" in params

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": self.mask, self.cache_key: self.cache, "use_cache": True}
        if self.with_pos:
            kwargs["position_ids"] = pos
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1]

    def prefill(self) -> torch.Tensor:
        return self._forward(self.ids, self.pos)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        self.pos = self.pos[:, -1:] + 1
        return self._forward(nxt[:, None], self.pos)

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask, self.pos = self.mask[keep], self.pos[keep]


PACK_TOKENS = 512  # prompt tokens per prefill forward (its block-diagonal attention grows with the square)


def _keep(kept: list, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill's `kv`: keep the layer's keys and values (to copy into the slots) and attend over them."""
    kept.append((k, v))
    return k, v


class _LlamaSlots:
    """A preallocated cache of `n_slots` rows per layer for Llama-style decoders, written in place.

    Slot s holds its row's tokens from column 0 (`length[s]` of them; position = column). `admit` prefills
    prompts into free slots: the distinct prompts packed end to end (block-diagonal causal attention, positions
    restarting at each prompt), their keys and values copied into each of their slots. `step` runs one token
    for every slot (a view of the cache, no gather): a slot that is free or waiting writes a column that is
    overwritten before it is read, and only the slots in `going` advance."""

    def __init__(self, model, n_slots: int, max_len: int, device):
        cfg, inner = model.config, model.model
        self.model, self.inner, self.layers, self.device = model, inner, inner.layers, device
        attn = self.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        self.gqa = self.n_kv != n_heads
        dtype = inner.embed_tokens.weight.dtype
        shape = (n_slots, self.n_kv, max_len, self.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.length = torch.zeros(n_slots, dtype=torch.long, device=device)
        self.cols = torch.arange(max_len, device=device)

    def _layers(self, ids: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor, kv) -> torch.Tensor:
        """The decoder on ids (B, T) at positions pos (B, T); `kv(layer, k, v)` stores this forward's keys and
        values and returns the ones to attend over. Returns the final hidden states (B, T, hidden), normed."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        h = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(h, pos)
        B, T, _ = h.shape
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = kv(i, k, v)
            if T == 1:   # one query per row: two batched matmuls over the kv heads' groups beat SDPA's kernel
                qg = q.view(B, self.n_kv, -1, self.head_dim)                       # (B, kv, group, D)
                scores = (qg @ k.transpose(-1, -2)).float() * self.scaling         # (B, kv, group, cols)
                scores = scores.masked_fill(~attn_mask, float("-inf")).softmax(-1)  # in fp32 whatever the dtype
                o = (scores.to(v.dtype) @ v).reshape(B, -1, 1, self.head_dim)      # (B, heads, 1, D)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scaling,
                                                   enable_gqa=self.gqa)
            h = h + a.o_proj(o.transpose(1, 2).reshape(B, T, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.inner.norm(h)

    def admit(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill `prompts` into `slots`; returns the logits of each prompt's next token (len(slots), V)."""
        distinct: dict[tuple[int, ...], int] = {}
        for p in prompts:
            distinct.setdefault(tuple(p), len(distinct))
        uniq = list(distinct)
        slots_of: list[list[int]] = [[] for _ in uniq]
        for s, p in zip(slots, prompts):
            slots_of[distinct[tuple(p)]].append(s)
        logits: dict[int, torch.Tensor] = {}
        start = 0
        while start < len(uniq):
            end, n_tok = start, 0
            while end < len(uniq) and (end == start or n_tok + len(uniq[end]) <= PACK_TOKENS):
                n_tok += len(uniq[end])
                end += 1
            lens = [len(p) for p in uniq[start:end]]
            ids = torch.tensor([t for p in uniq[start:end] for t in p], device=self.device)[None]
            pos = torch.cat([torch.arange(n, device=self.device) for n in lens])[None]
            doc = torch.cat([torch.full((n,), j, device=self.device) for j, n in enumerate(lens)])
            mask = (doc[:, None] == doc[None, :]) & torch.ones(n_tok, n_tok, dtype=torch.bool,
                                                               device=self.device).tril()
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            h = self._layers(ids, pos, mask[None, None], functools.partial(_keep, kept))
            ends = torch.tensor(lens, device=self.device).cumsum(0)
            last = self.model.lm_head(h[0, ends - 1])                         # (prompts of the pack, V)
            off = 0
            for j, n in enumerate(lens):
                for s in slots_of[start + j]:
                    for i, (k, v) in enumerate(kept):
                        self.k[i][s, :, :n] = k[0, :, off:off + n]
                        self.v[i][s, :, :n] = v[0, :, off:off + n]
                    self.length[s] = n
                    logits[s] = last[j]
                off += n
            start = end
        return torch.stack([logits[s] for s in slots])

    def free(self, slots: list[int]) -> None:
        self.length[slots] = 0

    def step(self, tokens: torch.Tensor, going: torch.Tensor) -> torch.Tensor:
        """One token per slot (tokens (n_slots,)); only the slots in `going` keep it. Returns (n_slots, V)."""
        n = len(tokens)
        pos = self.length.clamp(max=len(self.cols) - 1)
        width = int(pos.max()) + 1
        mask = (self.cols[None, :width] <= pos[:, None])[:, None, None]        # (n, 1, 1, width)
        rows = torch.arange(n, device=self.device)

        def kv(i, k, v):
            self.k[i][rows, :, pos] = k[:, :, 0]
            self.v[i][rows, :, pos] = v[:, :, 0]
            return self.k[i][:, :, :width], self.v[i][:, :, :width]

        h = self._layers(tokens[:, None], pos[:, None], mask, kv)
        self.length[going] += 1
        return self.model.lm_head(h[:, -1])

    def select(self, keep: torch.Tensor) -> None:
        self.k = [k[keep] for k in self.k]
        self.v = [v[keep] for v in self.v]
        self.length = self.length[keep]
