"""The canonical example types every loader converts into.

Every supported dataset format (Alpaca, ShareGPT, OpenAI messages, prompt/completion, preference,
HH-RLHF transcripts, unpaired/KTO) becomes one of three types, so that rendering, packing and the
loss mask are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn. `role` is one of `ROLES`."""

    role: str
    content: str


@dataclass
class Conversation:
    """A chat: optional system turn, then user/assistant turns. Every assistant turn is trained.

    `document=True` marks plain language-model data (the `text` format), not a chat: `messages` holds one
    message with the raw text, rendered without the chat template (BOS, the text, EOS), every token trained.
    """

    messages: list[Message]
    where: str = ""  # provenance for error messages, e.g. "data.jsonl:12"
    document: bool = False


@dataclass
class Preference:
    """A prompt (messages ending with a user turn) and two completions (assistant messages)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    where: str = ""


@dataclass
class Unpaired:
    """A prompt, one completion, and a binary label (desirable or not), as KTO uses."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    where: str = ""
    meta: dict = field(default_factory=dict)
