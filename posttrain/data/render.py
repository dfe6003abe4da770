"""Render a conversation to token ids and the loss mask.

`Renderer.render(conversation) -> Rendered(input_ids, labels)` where `labels[t] == input_ids[t]` for every
token of assistant content (and the token that closes the assistant turn), and `-100` everywhere else.
The recipes never rediscover what is trainable: this is the only place that decides it.

How: the chat template is rendered at every assistant turn twice, with the generation prompt
(`head`) and with the turn (`full`); the text between is that turn. Each piece of text is tokenised
on its own and the ids concatenated, so the prompt tokens are exactly those the model sees at
generation time (tokenising the prompt alone), and no token straddles a prompt/response boundary.

A document (`Conversation.document`, the `text` format) is plain language-model data: no chat template,
`<bos> text <eos>` (BOS when the tokenizer has one), every token after the first trained, as pretraining
tokenises a document.

Guards against the failure modes other toolkits hit:
- the assistant turn's stop token is trained (found in the template, else EOS is appended);
- padding is masked by length in the collator, never by id, so EOS == pad cannot mask the stop token;
- a BOS already written by the template is not doubled by the tokenizer;
- an example with no assistant turn, an empty (or whitespace-only) assistant turn or document, or whose
  response truncation removed entirely, is dropped and counted (an empty turn would train only the stop
  token: answering nothing);
- a chat may open with an assistant turn (the prompt before it is what the template writes for an empty
  conversation); a template that refuses a conversation (e.g. `raise_exception('Conversation roles must
  alternate ...')`) gives a one-line error naming the example;
- a template that leaves nothing masked although the example has a prompt is an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from posttrain.data.loading import short_reason
from posttrain.data.types import Conversation, Message, Preference
from posttrain.errors import UserError

IGNORE = -100


@dataclass
class Rendered:
    """One tokenised example. `labels` is `input_ids` with -100 on every untrained token."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        """Tokens the loss sees (a target at position t predicts token t from tokens < t)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class RenderStats:
    """What rendering a dataset did: kept, truncated, and dropped examples by reason."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    trained_tokens: int = 0
    total_tokens: int = 0


def _as_dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


class Renderer:
    """Renders conversations with a tokenizer's chat template into (input_ids, labels)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int = 1024):
        self.tok = tokenizer
        self.max_seq_len = max_seq_len
        self.special = sorted(
            {t for t in tokenizer.all_special_tokens} | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
            key=len, reverse=True,
        )
        bos = tokenizer.bos_token_id
        self._tokenizer_adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]

    def template(self, messages: list[Message], generation_prompt: bool) -> str:
        # apply_chat_template refuses an empty conversation; its render is the prompt of a leading assistant turn
        if not messages:
            rendered, _ = render_jinja_template(
                [[]], chat_template=self.tok.get_chat_template(), add_generation_prompt=generation_prompt,
                **self.tok.special_tokens_map,
            )
            return rendered[0]
        return self.tok.apply_chat_template(_as_dicts(messages), tokenize=False, add_generation_prompt=generation_prompt)

    def _example_template(self, conv: Conversation, messages: list[Message], generation_prompt: bool) -> str:
        """`template`, with whatever the chat template raises (jinja's `raise_exception`, a bad index, ...)
        turned into one line naming the example: the data does not fit the template."""
        try:
            return self.template(messages, generation_prompt)
        except Exception as e:  # a template is user code: any exception it raises is about this input
            raise UserError(
                f"{conv.where or 'data'}: the chat template rejects this conversation: {short_reason(e)}"
            ) from e

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids if text else []

    def _split_stop(self, body: str, content: str) -> tuple[str, str]:
        """Split an assistant turn's text into (trained, untrained tail): trained ends with its stop token."""
        start = body.find(content) + len(content) if content and content in body else 0
        after = body[start:]
        hits = [(after.find(s), s) for s in self.special if s and after.find(s) >= 0]
        if hits:
            pos, tok = min(hits)
            cut = start + pos + len(tok)
            return body[:cut], body[cut:]
        # The template does not close assistant turns with a special token: close them with EOS.
        stripped = body.rstrip()
        return stripped + self.tok.eos_token, body[len(stripped):]

    def pieces(self, conv: Conversation) -> list[tuple[str, bool]]:
        """The conversation's template text cut into (text, trained) pieces."""
        msgs = conv.messages
        out: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            head = self._example_template(conv, msgs[:i], True)
            full = self._example_template(conv, msgs[: i + 1], False)
            if not head.startswith(done) or not full.startswith(head):
                raise UserError(
                    f"{conv.where or 'data'}: the chat template does not render turn by turn as a prefix "
                    "(it rewrites earlier turns); posttrain cannot locate the assistant tokens with it"
                )
            trained, tail = self._split_stop(full[len(head):], m.content)
            out += [(head[len(done):], False), (trained, True), (tail, False)]
            done = full
        rest = self._example_template(conv, msgs, False)[len(done):] if done else ""
        out.append((rest, False))
        return [(t, trained) for t, trained in out if t]

    def render(self, conv: Conversation) -> Rendered | str:
        """Tokenise `conv`; returns the reason string instead when the example must be dropped."""
        if conv.document:
            return self._render_document(conv)
        if not any(m.role == "assistant" for m in conv.messages):
            return "no assistant turn"
        if any(m.role == "assistant" and not m.content.strip() for m in conv.messages):
            return "empty assistant turn"
        ids: list[int] = []
        labels: list[int] = []
        for text, trained in self.pieces(conv):
            piece = self._ids(text)
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        bos = self.tok.bos_token_id
        if bos is not None:
            if ids[:2] == [bos, bos]:  # doubled BOS
                ids, labels = ids[1:], labels[1:]
            elif self._tokenizer_adds_bos and ids[:1] != [bos]:
                ids, labels = [bos] + ids, [IGNORE] + labels
        if all(x != IGNORE for x in labels) and any(m.role != "assistant" for m in conv.messages):
            raise UserError(f"{conv.where or 'data'}: every token is trained although the example has a prompt; "
                            "the chat template's assistant turns could not be located")
        return self._truncate(ids, labels)

    def _render_document(self, conv: Conversation) -> Rendered | str:
        """`<bos> text <eos>` without the chat template; every token after the first is trained."""
        text = "".join(m.content for m in conv.messages)
        if not text.strip():
            return "empty text"
        bos = self.tok.bos_token_id
        ids = ([bos] if bos is not None else []) + self._ids(text) + [self.tok.eos_token_id]
        return self._truncate(ids, [IGNORE] + ids[1:])  # the first token is context only

    def _truncate(self, ids: list[int], labels: list[int]) -> Rendered | str:
        truncated = len(ids) > self.max_seq_len
        ids, labels = ids[: self.max_seq_len], labels[: self.max_seq_len]
        out = Rendered(ids, labels, truncated)
        if out.n_trained == 0:
            return "truncated: no response token left" if truncated else "empty response"
        return out

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of a prompt with the generation prompt, as `render` tokenises it."""
        ids = self._ids(self.template(messages, True))
        bos = self.tok.bos_token_id
        if bos is not None and self._tokenizer_adds_bos and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    _PROBE = "\u27e8response\u27e9"

    def _probe_turn(self) -> str:
        """The trained text of a one-turn probe conversation whose response is `_PROBE`."""
        probe = Conversation([Message("user", "x"), Message("assistant", self._PROBE)])
        return [t for t, tr in self.pieces(probe) if tr][0]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn (EOS, plus a template's own end-of-turn token)."""
        last = self._ids(self._probe_turn())[-1:]
        return sorted({self.tok.eos_token_id, *last})

    def response_prefix(self) -> str:
        """Text a template writes after the generation prompt and before the content (the space of a
        template's "A: {content}"): trained with the response, and removed from generated text."""
        trained = self._probe_turn()
        return trained[: trained.find(self._PROBE)] if self._PROBE in trained else ""


def render_all(examples: list[Conversation], renderer: Renderer) -> tuple[list[Rendered], RenderStats]:
    """Render a dataset; dropped examples are counted by reason, never silently trained on."""
    stats = RenderStats(examples=len(examples))
    rows = []
    for ex in examples:
        r = renderer.render(ex)
        if isinstance(r, str):
            stats.dropped[r] += 1
            continue
        rows.append(r)
        stats.truncated += r.truncated
        stats.trained_tokens += r.n_trained
        stats.total_tokens += len(r.input_ids)
    stats.kept = len(rows)
    return rows, stats


def render_pairs(examples: list[Preference], renderer: Renderer) -> tuple[list[tuple[Rendered, Rendered]], Counter]:
    """(prompt + chosen, prompt + rejected) rendered, for every pair the preference recipes train on; a pair
    whose sides are identical, or one of whose sides the renderer drops, is left out and counted by reason
    (the rule `posttrain dpo`, `posttrain rm` and `posttrain data check` share)."""
    pairs, dropped = [], Counter()
    for ex in examples:
        if ex.chosen == ex.rejected:
            dropped["identical chosen and rejected"] += 1
            continue
        c = renderer.render(Conversation(ex.prompt + ex.chosen, ex.where))
        r = renderer.render(Conversation(ex.prompt + ex.rejected, ex.where))
        if isinstance(c, str) or isinstance(r, str):
            dropped[f"chosen: {c}" if isinstance(c, str) else f"rejected: {r}"] += 1
            continue
        pairs.append((c, r))
    return pairs, dropped
