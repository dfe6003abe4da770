"""Sampling: chat-templated, batched (left-padded), greedy or temperature/top-p, stops at the turn's end;
`n` samples per prompt and, opt-in, each sampled token's log-probability (what PPO/GRPO ratios need).

Every later stage (evaluation, preference collection, PPO/GRPO rollouts) samples through `generate`,
so a prompt is tokenised exactly as `Renderer` tokenises it for training.
"""

from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from posttrain.data.collate import pack_groups, pack_lengths, packed_batch
from posttrain.data.render import IGNORE, Rendered, Renderer
from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.rollout.decode import decode

ENGINES = ("posttrain", "hf")


def chat_prompt(user: str, system: str = "") -> list[Message]:
    return ([Message("system", system)] if system else []) + [Message("user", user)]


class ChatCodec:
    """What sampling needs from a tokenizer, shared by `generate` and `rollout/serve.py`: a prompt's token ids
    (the chat template as `Renderer.prompt_ids` applies it, or with `raw` the plain text), the stop ids, the pad
    id, and a response's text (`response`: without the stop token and without the `prefix` the chat template
    writes before every response)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, raw: bool = False):
        self.tokenizer, self.raw = tokenizer, raw
        self.renderer = Renderer(tokenizer, max_seq_len=10**9)
        self.stop_ids = self.renderer.stop_token_ids()
        self.prefix = "" if raw else self.renderer.response_prefix()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def prompt_ids(self, prompt: list[Message] | str) -> list[int]:
        if self.raw:
            text = prompt if isinstance(prompt, str) else "\n".join(m.content for m in prompt)
            return self.tokenizer(text).input_ids
        return self.renderer.prompt_ids(chat_prompt(prompt) if isinstance(prompt, str) else prompt)

    def response(self, token_ids: list[int], stopped: bool) -> dict:
        """`generate`'s `text`, `ids`, `stopped` and `token_ids` of one row of new tokens (the stop token
        included when `stopped`)."""
        r = _result(self.tokenizer, token_ids, stopped, None)
        r["text"] = r["text"].removeprefix(self.prefix)
        return r


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[Message]] | list[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    raw: bool = False,
    progress: str = "",
    n: int = 1,
    return_logprobs: bool = False,
    engine: str = "posttrain",
) -> list[dict]:
    """Complete each prompt `n` times. A prompt is a message list (chat template applied) or, with `raw`, plain
    text. A non-empty `progress` shows a progress bar over the samples with that label.

    Returns `len(prompts) * n` dicts, prompt-major (all samples of prompt 0, then prompt 1, ...), each with:
    `text` (decoded response without the stop token and without the text the chat template writes before every
    response, such as the space of "A: {content}"), `ids` (response token ids without the stop token),
    `stopped` (whether it ended with a stop token rather than running out of tokens), `token_ids` (`ids` plus
    the stop token when `stopped`), `prompt_ids` (the prompt's token ids as fed to the model, unpadded),
    `prompt_index`, `sample_index`; with `return_logprobs`, `logprobs`: one float per entry of `token_ids`, the
    token's log-probability under the model at temperature 1 before top-p (log_softmax of the raw logits),
    whatever `temperature` and `top_p` sampled it. The sampled tokens do not depend on `return_logprobs`.

    `engine`: "posttrain" (`rollout/decode.py`: continuous batching of `batch_size` rows over a preallocated
    cache, a prompt's n samples share one prefill; each sample drawn from its own random stream, seeded by
    (`seed`, prompt index, sample index), so `batch_size` never changes what is sampled) or "hf"
    (`transformers`' `model.generate` on batches of `batch_size`, seeded per batch: the reference the posttrain
    engine is tested against, with the same greedy tokens and the same per-token distributions, not the same
    random draws).
    """
    if engine not in ENGINES:
        raise UserError(f"generate: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if n < 1:
        raise UserError(f"generate: n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise UserError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise UserError(f"generate: batch_size must be >= 1, got {batch_size}")
    if temperature < 0:
        raise UserError(f"generate: temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"generate: top_p must be in (0, 1], got {top_p}")
    codec = ChatCodec(tokenizer, raw)
    stop_ids, pad_id = codec.stop_ids, codec.pad_id
    encoded = [codec.prompt_ids(p) for p in prompts]
    rows = [(i, s) for i in range(len(encoded)) for s in range(n)]  # a prompt's n samples are adjacent rows
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    results = []
    bar = tqdm(total=len(rows), desc=progress, disable=not progress, dynamic_ncols=True)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # sampling leaves the caller's RNG state (CPU and GPU) as it was
        if engine == "hf":
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                results += _generate_chunk(model, tokenizer, [encoded[i] for i, _ in chunk], pad_id, stop_ids,
                                           max_new_tokens, temperature, top_p, gen, device, return_logprobs)
                bar.update(len(chunk))
        else:
            decoded = decode(model, [encoded[i] for i, _ in rows], pad_id, stop_ids, max_new_tokens,
                             temperature=temperature, top_p=top_p, seeds=[row_seed(seed, i, s) for i, s in rows],
                             logprobs=return_logprobs, batch_size=batch_size, on_done=bar.update)
            results = [_result(tokenizer, d.tokens, d.stopped, d.logprobs) for d in decoded]
    bar.close()
    model.train(was_training)
    for r, (i, s) in zip(results, rows):
        r["text"] = r["text"].removeprefix(codec.prefix)  # the template's text before every response is not the model's
        r.update(prompt_ids=list(encoded[i]), prompt_index=i, sample_index=s)
    return results


def _result(tokenizer, token_ids: list[int], stopped: bool, logprobs: list[float] | None) -> dict:
    resp = token_ids[:-1] if stopped else token_ids
    r = {"text": tokenizer.decode(resp, skip_special_tokens=True), "ids": resp, "stopped": stopped,
         "token_ids": token_ids}
    if logprobs is not None:
        r["logprobs"] = logprobs
    return r


def samples_batch(samples: list[dict], chunk: list[int], pad_id: int,
                  share_prompts: bool = False) -> tuple[dict, list[int]]:
    """The samples `chunk` (indices into `generate`'s output) as training sequences, prompt ids + token ids with
    the loss on the response, packed into rows (`data.collate.packed_batch` with doc_ids): what RL and KL passes
    score them with (`models.forward.token_logps`). With `share_prompts` (for a model that takes a 4-D mask,
    `models.forward.takes_custom_mask`), when some prompt repeats, the samples of one prompt (GRPO's group) are
    laid out with the prompt once (`data.collate.pack_groups`). Returns the batch and the samples' order in it
    (document k is sample order[k])."""
    seqs = {i: Rendered(samples[i]["prompt_ids"] + samples[i]["token_ids"],
                        [IGNORE] * len(samples[i]["prompt_ids"]) + samples[i]["token_ids"]) for i in chunk}
    by_prompt: dict[tuple, list[int]] = {}
    for i in chunk if share_prompts else ():
        by_prompt.setdefault(tuple(samples[i]["prompt_ids"]), []).append(i)
    if share_prompts and len(by_prompt) < len(chunk):   # some prompt repeats: shorter rows
        groups = list(by_prompt.values())
        stems = [max(len(samples[g[0]]["prompt_ids"]) - 1, 0) for g in groups]
        batch, where = pack_groups([[seqs[i] for i in g] for g in groups], stems, pad_id)
        return batch, [i for j in where for i in groups[j]]
    lengths = [len(seqs[i].input_ids) for i in chunk]
    rows = pack_lengths(lengths, max(lengths))
    order = [chunk[j] for r in rows for j in r]
    return packed_batch([[seqs[chunk[j]] for j in r] for r in rows], pad_id, doc_ids=True), order


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one sample's random stream (posttrain engine): a function of the call's seed, the prompt's
    position and the sample's number only."""
    return ((seed * 1_000_003 + prompt_index) * 65_537 + sample_index) % 2**63


def _generate_chunk(model, tokenizer, chunk: list[list[int]], pad_id: int, stop_ids: list[int], max_new_tokens: int,
                    temperature: float, top_p: float, gen: torch.Generator, device, logprobs: bool) -> list[dict]:
    """One left-padded batch of B rows: every prompt ends at the same column W, so new tokens start together.

    `model.generate` returns `sequences` (B, W + S) and, with `logprobs`, the raw logits of each of the S steps,
    a tuple of S tensors (B, V) in fp32 (before temperature and top-p); they are reduced step by step to the
    log-probabilities (B, S) of the tokens taken.
    """
    width = max(len(x) for x in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(chunk):
        ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    sample = temperature > 0
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
        do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
        top_k=None, eos_token_id=stop_ids, pad_token_id=pad_id, return_dict_in_generate=True, output_logits=logprobs,
    )
    new = out.sequences[:, width:]  # (B, S)
    if logprobs:
        token_lp = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(1, tok[:, None])[:, 0]
                                for step, tok in zip(out.logits, new.T)], dim=1).tolist()  # (B, S)
    results = []
    for b, row in enumerate(new.tolist()):
        cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
        token_ids = row if cut is None else row[: cut + 1]
        results.append(_result(tokenizer, token_ids, cut is not None, token_lp[b][: len(token_ids)] if logprobs else None))
    return results


def generate_cli(args) -> int:
    from posttrain.models.load import load_model, load_tokenizer

    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            with open(args.prompts_file) as f:
                prompts += [ln.rstrip("\n") for ln in f if ln.strip()]
        except OSError:
            raise UserError(f"--prompts-file: cannot read '{args.prompts_file}'") from None
    if not prompts:
        raise UserError("generate: give at least one --prompt TEXT (or --prompts-file FILE)")
    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    msgs = [chat_prompt(p, args.system) for p in prompts]
    outs = generate(model, tok, prompts if args.raw else msgs, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                    raw=args.raw)
    if args.json:
        print(json.dumps([{"prompt": p, "response": o["text"], "stopped": o["stopped"]} for p, o in zip(prompts, outs)],
                         indent=2))
    else:
        for p, o in zip(prompts, outs):
            print(f">>> {p}\n{o['text']}\n")
    return 0
