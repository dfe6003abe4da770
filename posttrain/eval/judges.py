"""Judges behind one interface: which of two answers to a prompt is better.

    judge = make_judge("gold" | "annotator:NAME" | "rm:PATH" | "llm:PATH[#generate|#rating]" | "http:URL[#MODEL]")
    verdicts = judge.judge(pairs)          # one Verdict per Pair: "first", "second", "tie", or None (unreadable)
    results = both_orders(judge, pairs)    # each pair judged as (a, b) and as (b, a); disagreement -> tie
    report = judge_report(results, gold)   # swap consistency, first-position preference, agreement, kappa

- `gold`: the world's verifier (needs the world's task): the higher gold wins, equal gold is a tie.
- `annotator:NAME`: a simulated annotator of `world/annotators.py` (fair, length, position, panel, gold), fed
  the gold scores and lengths of the two answers in the order shown, so its position bias acts on the order.
- `rm:PATH`: a reward model (`posttrain rm`, or any AutoModelForSequenceClassification): the higher score wins;
  `p_first` = s(r_first - r_second).
- `llm:PATH`: an LLM judge on any local Hugging Face causal LM, given `JUDGE_PROMPT` through its chat template.
  Default mode `logprob`: one forward pass over the two continuations "[[A]]" and "[[B]]" of its answer, p_first
  = p(A) / (p(A) + p(B)) (each the product of its tokens' probabilities, so a tokenizer that splits "[[A]]"
  anywhere is handled); the larger wins, equal is a tie. `#generate`: it writes a verdict (greedy, up to 32
  tokens), parsed as [[A]] / [[B]] / [[C]] (tie) with the single-bracket [A] / [B] / [C] as the fallback;
  anything else is unreadable (None, counted, never a tie or a zero). `#rating`: each answer rated alone with
  `RATING_PROMPT` on 1-9, the expected rating sum_k k p(k) over the continuations "[[1]]".."[[9]]" (1-9, not 1-10:
  a tokenizer may split "10" into two tokens, which would make one rating a two-step continuation); the higher
  expected rating wins. `#generate-rating`: each answer rated alone in writing, parsed as [[rating]] with
  [rating] as the fallback (1-10); the higher wins, an unreadable rating makes the verdict unreadable.
- `http:URL`: an LLM judge behind an OpenAI-compatible endpoint (`posttrain serve`, vLLM, a hosted API), called
  with the `openai` client (temperature 0, `max_retries` retries with its backoff, `timeout` seconds), its verdict
  parsed as `#generate`'s. A refused connection, a timeout or an HTTP error after the retries is an unreadable
  verdict with the reason kept (`Verdict.raw`), counted in the report. The API key is $OPENAI_API_KEY or "none".
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.world.core import Task

JUDGE_SYSTEM = ("You are a careful judge of assistant answers. Decide which answer serves the user better: "
                "correct, following every instruction, safe, and no longer than it needs to be. The order of the "
                "answers and their length are not reasons to prefer one.")
JUDGE_PROMPT = ("[Conversation]\n{question}\n\n[Answer A]\n{first}\n[End of answer A]\n\n[Answer B]\n{second}\n"
                "[End of answer B]\n\nGive your verdict as [[A]] if answer A is better, [[B]] if answer B is "
                "better, or [[C]] for a tie.")
RATING_PROMPT = ("[Conversation]\n{question}\n\n[Answer]\n{answer}\n[End of answer]\n\nRate the answer from 1 "
                 "(useless or harmful) to 9 (correct, complete, safe) as [[rating]], for example [[5]].")
RATINGS = tuple(range(1, 10))
WINNERS = ("first", "second", "tie")


@dataclass
class Pair:
    """Two answers to one prompt in the order shown: `first` as answer A, `second` as answer B. `task` is the
    world's task when the prompt is one (the gold and annotator judges need it); `stopped`: whether each answer
    ended with a stop token (gold scores an answer that ran out of tokens 0, as the evaluation does)."""
    messages: list[Message]
    first: str
    second: str
    task: Task | None = None
    stopped: tuple[bool, bool] = (True, True)

    def swapped(self) -> Pair:
        return Pair(self.messages, self.second, self.first, self.task, self.stopped[::-1])

    def golds(self, who: str) -> tuple[float, float]:
        from posttrain.world import score

        if self.task is None:
            raise UserError(f"judge {who}: the pairs are not world tasks (it reads the world's gold scores)")
        return score(self.task, self.first, self.stopped[0]).gold, score(self.task, self.second, self.stopped[1]).gold


@dataclass
class Verdict:
    """`winner`: "first", "second", "tie", or None when the judge's answer could not be read (`raw` says what
    it was, or why there was none); `p_first`: the judge's probability that the first is better, if it has one."""
    winner: str | None
    p_first: float | None = None
    raw: str = ""


class Judge(Protocol):
    name: str

    def judge(self, pairs: list[Pair]) -> list[Verdict]: ...


def question_text(messages: list[Message]) -> str:
    """The prompt as the judge reads it: a single user turn as is, a longer conversation as `role: text` lines."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _verdict_of(sign: float) -> str:
    return "first" if sign > 0 else "second" if sign < 0 else "tie"


def parse_verdict(text: str) -> str | None:
    """[[A]] / [[B]] / [[C]] -> first / second / tie; the single-bracket form when no double one is there; None
    when neither form names exactly one verdict."""
    for pattern in (r"\[\[([ABC])\]\]", r"(?<!\[)\[([ABC])\](?!\])"):
        found = set(re.findall(pattern, text))
        if len(found) == 1:
            return {"A": "first", "B": "second", "C": "tie"}[found.pop()]
        if found:
            return None  # two different verdicts: unreadable
    return None


def parse_rating(text: str, low: float = 1, high: float = 10) -> float | None:
    """[[rating]] (a number in [low, high]), with [rating] as the fallback; None otherwise."""
    for pattern in (r"\[\[(\d+(?:\.\d+)?)\]\]", r"(?<!\[)\[(\d+(?:\.\d+)?)\](?!\])"):
        found = {float(x) for x in re.findall(pattern, text)}
        if len(found) == 1 and low <= (value := found.pop()) <= high:
            return value
        if found:
            return None
    return None


class GoldJudge:
    name = "gold"

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        out = []
        for p in pairs:
            a, b = p.golds(self.name)
            d = a - b
            out.append(Verdict(_verdict_of(d), 1.0 if d > 0 else 0.0 if d < 0 else 0.5))
        return out


class AnnotatorJudge:
    """A simulated annotator shown (first, second) with their gold scores and lengths; its random stream is
    seeded once, so the same pairs in the same order give the same labels."""

    def __init__(self, name: str, seed: int = 0):
        from posttrain.world.annotators import get_annotator

        self.annotator = get_annotator(name)
        self.name, self.rng = f"annotator:{name}", random.Random(seed)

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        from posttrain.world.annotators import response_length

        out = []
        for p in pairs:
            label = self.annotator.judge(*p.golds(self.name), self.rng, response_length(p.first),
                                         response_length(p.second))
            out.append(Verdict({"a": "first", "b": "second", "tie": "tie"}[label]))
        return out


class RewardModelJudge:
    """Scores both answers with a reward model; the higher wins. Each distinct (prompt, answer) is scored once
    and kept: an arena's answers recur in every battle and in both orders (six models on 280 prompts: 1,680
    answers instead of 16,800 forward passes)."""

    def __init__(self, path: str, batch_size: int = 16, max_seq_len: int = 1024):
        from posttrain.recipes.rm import load_scorer

        self.name, self.batch_size, self.max_seq_len = f"rm:{path}", batch_size, max_seq_len
        self.model, self.tok, self.pad_id = load_scorer(path)
        self.scores: dict[tuple, dict] = {}

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        from posttrain.data.types import Conversation
        from posttrain.recipes.rm import score_examples

        def key(p: Pair, x: str) -> tuple:
            return tuple((m.role, m.content) for m in p.messages), x

        todo = {}
        for p in pairs:
            for x in (p.first, p.second):
                if (k := key(p, x)) not in self.scores and k not in todo:
                    todo[k] = Conversation([*p.messages, Message("assistant", x)], where=f"answer {len(todo)}")
        if todo:
            device = str(next(self.model.parameters()).device)
            rows = score_examples(self.model, self.tok, list(todo.values()), self.pad_id, self.max_seq_len,
                                  self.batch_size, device)
            self.scores.update(zip(todo, rows))
        out = []
        for p in pairs:
            a, b = self.scores[key(p, p.first)], self.scores[key(p, p.second)]
            if a["score"] is None or b["score"] is None:
                out.append(Verdict(None, raw=(a.get("skipped") or b.get("skipped") or "not scored")))
                continue
            d = a["score"] - b["score"]
            out.append(Verdict(_verdict_of(d), 1 / (1 + math.exp(-d))))
        return out


class LLMJudge:
    MODES = ("logprob", "generate", "rating", "generate-rating")

    def __init__(self, path: str, mode: str = "logprob", batch_size: int = 16, max_new_tokens: int = 32):
        if mode not in self.MODES:
            raise UserError(f"judge llm:{path}#{mode}: the mode must be one of {', '.join(self.MODES)}")
        from posttrain.models.load import load_model, load_tokenizer
        from posttrain.rollout.generate import ChatCodec

        self.name = f"llm:{path}" + ("" if mode == "logprob" else f"#{mode}")
        self.mode, self.batch_size, self.max_new_tokens = mode, batch_size, max_new_tokens
        self.tok = load_tokenizer(path)
        self.model = load_model(path).eval()
        self.codec = ChatCodec(self.tok)

    def _messages(self, p: Pair) -> list[Message]:
        return [Message("system", JUDGE_SYSTEM),
                Message("user", JUDGE_PROMPT.format(question=question_text(p.messages), first=p.first,
                                                    second=p.second))]

    def continuation_logps(self, prompts: list[list[Message]], continuations: list[str]) -> list[list[float]]:
        """log p(continuation | prompt) of every continuation after every prompt (the chat template's text
        before a response included, as generation sees it), by one forward pass per batch of sequences."""
        import torch

        from posttrain.models.forward import token_logps
        from posttrain.rollout.generate import samples_batch

        conts = [self.tok(self.codec.prefix + c, add_special_tokens=False).input_ids for c in continuations]
        samples = [{"prompt_ids": self.codec.prompt_ids(m), "token_ids": c} for m in prompts for c in conts]
        flat = [0.0] * len(samples)
        per_batch = self.batch_size * len(conts)
        with torch.no_grad():
            for start in range(0, len(samples), per_batch):
                chunk = list(range(start, min(start + per_batch, len(samples))))
                batch, order = samples_batch(samples, chunk, self.codec.pad_id)
                device = next(self.model.parameters()).device
                lp, mask, _ = token_logps(self.model, {k: v.to(device) for k, v in batch.items()}, len(chunk))
                for k, i in enumerate(order):
                    flat[i] = float((lp[k] * mask[k]).sum())
        return [flat[i * len(conts):(i + 1) * len(conts)] for i in range(len(prompts))]

    @staticmethod
    def _rating_messages(messages: list[Message], answer: str) -> list[Message]:
        return [Message("system", JUDGE_SYSTEM),
                Message("user", RATING_PROMPT.format(question=question_text(messages), answer=answer))]

    def ratings(self, prompts: list[list[Message]], answers: list[str]) -> list[float]:
        """The expected rating sum_k k p(k) on 1-9 of each answer alone (`RATING_PROMPT`)."""
        msgs = [self._rating_messages(m, a) for m, a in zip(prompts, answers)]
        out = []
        for lps in self.continuation_logps(msgs, [f"[[{k}]]" for k in RATINGS]):
            top = max(lps)
            w = [math.exp(x - top) for x in lps]
            out.append(sum(k * x for k, x in zip(RATINGS, w)) / sum(w))
        return out

    def _too_long(self, p: Pair) -> str:
        """Why the judge cannot read this pair (its prompt does not fit the model's context), or ""."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        extra = self.max_new_tokens if self.mode.startswith("generate") else 16  # what it writes, or a few tokens
        length = len(self.codec.prompt_ids(self._messages(p))) + extra
        return f"the judge prompt needs {length} positions; the model has {limit}" if limit and length > limit else ""

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        reasons = [self._too_long(p) for p in pairs]
        if any(reasons):  # judged beyond its context a model reads noise: unreadable, counted, never guessed
            fit = [p for p, r in zip(pairs, reasons) if not r]
            got = iter(self.judge(fit) if fit else [])
            return [Verdict(None, raw=r) if r else next(got) for r in reasons]
        if self.mode == "logprob":
            out = []
            for la, lb in self.continuation_logps([self._messages(p) for p in pairs], ["[[A]]", "[[B]]"]):
                p_first = 1 / (1 + math.exp(lb - la))
                out.append(Verdict(_verdict_of(la - lb), p_first))
            return out
        if self.mode == "rating":
            r = self.ratings([p.messages for p in pairs] * 2, [p.first for p in pairs] + [p.second for p in pairs])
            n = len(pairs)
            return [Verdict(_verdict_of(r[i] - r[n + i]), raw=f"ratings {r[i]:.3f} vs {r[n + i]:.3f}")
                    for i in range(n)]
        from posttrain.rollout.generate import generate

        if self.mode == "generate-rating":  # each answer rated alone in writing, [[r]] (or [r]) on 1-10
            msgs = [self._rating_messages(p.messages, a) for p in pairs for a in (p.first, p.second)]
            outs = generate(self.model, self.tok, msgs, max_new_tokens=self.max_new_tokens, temperature=0.0,
                            batch_size=self.batch_size)
            out = []
            for i in range(len(pairs)):
                a, b = (o["text"] for o in outs[2 * i:2 * i + 2])
                ra, rb = parse_rating(a), parse_rating(b)
                out.append(Verdict(None, raw=f"{a!r} / {b!r}") if ra is None or rb is None
                           else Verdict(_verdict_of(ra - rb), raw=f"ratings {ra:g} vs {rb:g}"))
            return out
        outs = generate(self.model, self.tok, [self._messages(p) for p in pairs], max_new_tokens=self.max_new_tokens,
                        temperature=0.0, batch_size=self.batch_size)
        return [Verdict(parse_verdict(o["text"]), raw=o["text"]) for o in outs]


class HTTPJudge:
    def __init__(self, url: str, model: str | None = None, timeout: float = 60.0, max_retries: int = 2,
                 workers: int = 8, max_tokens: int = 64):
        import os

        import openai

        self.url, self.workers, self.max_tokens = url.rstrip("/"), workers, max_tokens
        self.client = openai.OpenAI(base_url=self.url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                    timeout=timeout, max_retries=max_retries)
        if model is None:
            try:
                model = self.client.models.list().data[0].id
            except Exception as e:  # what the server or the network says is about the URL the user gave
                raise UserError(f"judge {url}: cannot list its models ({type(e).__name__}: {e}); give the "
                                f"model as http:URL#MODEL") from None
        self.model = model
        self.name = f"{self.url}#{model}"

    def _one(self, p: Pair) -> Verdict:
        import openai

        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_PROMPT.format(question=question_text(p.messages),
                                                                    first=p.first, second=p.second)}]
        try:
            r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                    max_tokens=self.max_tokens)
        except (openai.APIConnectionError, openai.APIStatusError) as e:  # after the client's retries
            return Verdict(None, raw=f"{type(e).__name__}: {e}")
        text = (r.choices[0].message.content or "") if r.choices else ""
        return Verdict(parse_verdict(text), raw=text)

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:  # concurrent requests, which a batching server batches
            return list(pool.map(self._one, pairs))


def make_judge(spec: str, seed: int = 0) -> Judge:
    """A judge from its command-line name (module docstring)."""
    kind, _, rest = spec.partition(":")
    if spec == "gold":
        return GoldJudge()
    if kind == "annotator" and rest:
        from posttrain.world.annotators import ANNOTATORS

        if rest not in ANNOTATORS:
            from posttrain.errors import did_you_mean

            raise UserError(f"judge: unknown annotator '{rest}'{did_you_mean(rest, ANNOTATORS)}; annotators: "
                            f"{', '.join(ANNOTATORS)}")
        return AnnotatorJudge(rest, seed)
    if kind == "rm" and rest:
        return RewardModelJudge(rest)
    if kind == "llm" and rest:
        path, _, mode = rest.partition("#")
        return LLMJudge(path, mode or "logprob")
    if kind in ("http", "https") and rest:
        url, _, model = spec.partition("#")
        return HTTPJudge(url, model or None)
    raise UserError(f"judge: '{spec}' is not one of gold, annotator:NAME, rm:PATH, "
                    f"llm:PATH[#generate|#rating|#generate-rating], "
                    f"http://HOST:PORT/v1[#MODEL]")


def both_orders(judge: Judge, pairs: list[Pair]) -> list[dict]:
    """Each pair judged as shown (a first) and swapped (b first), in one call: {"ab": winner of the first order
    in a/b terms, "ba": of the second, "winner": "a", "b" or "tie" (a disagreement between the orders is a tie),
    or None when either verdict was unreadable, "raw": the unreadable verdicts' text}."""
    verdicts = judge.judge(list(pairs) + [p.swapped() for p in pairs])
    n = len(pairs)
    out = []
    for i in range(n):
        v1, v2 = verdicts[i], verdicts[n + i]
        ab = {"first": "a", "second": "b", "tie": "tie"}.get(v1.winner) if v1.winner else None
        ba = {"first": "b", "second": "a", "tie": "tie"}.get(v2.winner) if v2.winner else None
        winner = None if ab is None or ba is None else ab if ab == ba else "tie"
        out.append({"ab": ab, "ba": ba, "winner": winner,
                    "raw": [v.raw for v in (v1, v2) if v.winner is None]})
    return out


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two label lists over the same items: (p_o - p_e) / (1 - p_e), p_e from the two
    marginals; None when p_e is 1 (both always give one and the same label)."""
    if not x:
        return None
    n = len(x)
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[k] * cy[k] for k in cx) / n**2
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def judge_report(results: list[dict], gold: list[str] | None = None) -> dict:
    """What a judge's two-order verdicts say about it. `swap_consistency`: the fraction of pairs (both orders
    readable) whose two verdicts agree; `first_position`: of the readable verdicts that pick a side, the fraction
    picking the answer shown first (0.5 for a judge without position bias); `failures`: pairs with an unreadable
    verdict. With `gold` labels ("a", "b", "tie") per pair: `agreement` (the combined verdict equals gold, ties
    included, over readable pairs), `agreement_no_ties` (over pairs where neither is a tie) and `kappa`
    (Cohen's, three labels)."""
    readable = [r for r in results if r["winner"] is not None]
    picks = [(r["ab"], "a") for r in results if r["ab"] in ("a", "b")] + \
            [(r["ba"], "b") for r in results if r["ba"] in ("a", "b")]
    report = {
        "n": len(results), "failures": len(results) - len(readable),
        "swap_consistency": (sum(r["ab"] == r["ba"] for r in readable) / len(readable)) if readable else None,
        "first_position": (sum(w == shown for w, shown in picks) / len(picks)) if picks else None,
        "ties": sum(r["winner"] == "tie" for r in readable),
    }
    if gold is not None:
        pairs = [(r["winner"], g) for r, g in zip(results, gold) if r["winner"] is not None]
        strict = [(w, g) for w, g in pairs if w != "tie" and g != "tie"]
        report.update(
            agreement=(sum(w == g for w, g in pairs) / len(pairs)) if pairs else None,
            agreement_no_ties=(sum(w == g for w, g in strict) / len(strict)) if strict else None,
            kappa=cohen_kappa([w for w, _ in pairs], [g for _, g in pairs]),
        )
    return report
