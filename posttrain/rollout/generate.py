"""Sampling: chat-templated, batched (left-padded), greedy or temperature/top-p, stops at the turn's end.

Every later stage (evaluation, preference collection, PPO/GRPO rollouts) samples through `generate`,
so a prompt is tokenised exactly as `Renderer` tokenises it for training.
"""

from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from posttrain.data.render import Renderer
from posttrain.data.types import Message


def chat_prompt(user: str, system: str = "") -> list[Message]:
    return ([Message("system", system)] if system else []) + [Message("user", user)]


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
) -> list[dict]:
    """Complete each prompt. A prompt is a message list (chat template applied) or, with `raw`, plain text.
    A non-empty `progress` shows a progress bar over the prompts with that label.

    Returns one dict per prompt: `text` (decoded response without the stop token and without the text the
    chat template writes before every response, such as the space of "A: {content}"), `ids` (response token ids),
    `stopped` (whether it ended with a stop token rather than running out of tokens).
    """
    renderer = Renderer(tokenizer, max_seq_len=10**9)
    stop_ids = renderer.stop_token_ids()
    prefix = "" if raw else renderer.response_prefix()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    encoded = []
    for p in prompts:
        if raw:
            text = p if isinstance(p, str) else "\n".join(m.content for m in p)
            ids = tokenizer(text).input_ids
        else:
            ids = renderer.prompt_ids(chat_prompt(p) if isinstance(p, str) else p)
        encoded.append(ids)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    results = []
    bar = tqdm(total=len(encoded), desc=progress, disable=not progress, dynamic_ncols=True)
    with torch.random.fork_rng(devices=[]):  # sampling leaves the caller's RNG state as it was
        for start in range(0, len(encoded), batch_size):
            results += _generate_chunk(model, tokenizer, encoded[start : start + batch_size], pad_id, stop_ids,
                                       max_new_tokens, temperature, top_p, gen, device)
            bar.update(len(encoded[start : start + batch_size]))
    bar.close()
    model.train(was_training)
    for r in results:  # the template's text before every response is not the model's
        r["text"] = r["text"].removeprefix(prefix)
    return results


def _generate_chunk(model, tokenizer, chunk: list[list[int]], pad_id: int, stop_ids: list[int], max_new_tokens: int,
                    temperature: float, top_p: float, gen: torch.Generator, device) -> list[dict]:
    """One left-padded batch: every prompt ends at the same column, so new tokens start together."""
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
        top_k=None, eos_token_id=stop_ids, pad_token_id=pad_id,
    )
    results = []
    for row in out[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
        resp = row if cut is None else row[:cut]
        results.append({"text": tokenizer.decode(resp, skip_special_tokens=True), "ids": resp, "stopped": cut is not None})
    return results


def generate_cli(args) -> int:
    from posttrain.errors import UserError
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
