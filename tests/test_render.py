"""The loss mask, token by token: what is trained is every assistant turn and its stop token, nothing else."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import processors

from posttrain.data.collate import packed_batch, pad_batch
from posttrain.data.render import IGNORE, Renderer, render_all
from posttrain.data.types import Conversation, Message
from posttrain.errors import UserError

CHAT = Conversation([
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "Add 2 and 3"),
    Message("assistant", "5"),
])


def expected(tok, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False).input_ids
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


def trained_text(tok, ids, labels) -> str:
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])


def test_multi_turn_mask_every_token(tok):
    r = Renderer(tok).render(CHAT)
    ids, labels = expected(tok, [
        ("<|bos|><|system|>Be brief.<|end|><|user|>Q: Hi<|end|><|assistant|>A:", False),
        (" Hello!<|eos|>", True),
        ("<|user|>Q: Add 2 and 3<|end|><|assistant|>A:", False),
        (" 5<|eos|>", True),
    ])
    assert r.input_ids == ids
    assert r.labels == labels
    # Every token, by name (this tokenizer is trained in the test, so its pieces are fixed). The template's
    # "A:" is prompt; the space after it is the response's first token, as in "A: answer" on a web page.
    names = tok.convert_ids_to_tokens(r.input_ids)
    trained = [lab != IGNORE for lab in r.labels]
    assert list(zip(names, trained)) == [
        ("<|bos|>", False), ("<|system|>", False), ("B", False), ("e", False), ("Ġ", False), ("b", False),
        ("r", False), ("i", False), ("e", False), ("f", False), (".", False), ("<|end|>", False),
        ("<|user|>", False), ("Q", False), (":", False), ("Ġ", False), ("H", False), ("i", False), ("<|end|>", False),
        ("<|assistant|>", False), ("A", False), (":", False),
        ("Ġ", True), ("H", True), ("e", True), ("l", True), ("lo", True), ("!", True), ("<|eos|>", True),
        ("<|user|>", False), ("Q", False), (":", False), ("Ġ", False), ("A", False), ("d", False), ("d", False),
        ("Ġ", False), ("2", False), ("Ġ", False), ("an", False), ("d", False), ("Ġ", False), ("3", False),
        ("<|end|>", False), ("<|assistant|>", False), ("A", False), (":", False),
        ("Ġ", True), ("5", True), ("<|eos|>", True),
    ]
    assert trained_text(tok, r.input_ids, r.labels) == " Hello!<|eos|> 5<|eos|>"
    assert r.n_trained == sum(trained)  # position 0 (BOS) is never trained, so nothing is lost by the shift
    assert r.input_ids.count(tok.bos_token_id) == 1


def test_default_template_closes_turns_with_eos(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    from posttrain.models.tokenizer import DEFAULT_TEMPLATE

    plain.chat_template = DEFAULT_TEMPLATE
    r = Renderer(plain).render(CHAT)
    ids, labels = expected(plain, [
        ("System: Be brief.\n\nUser: Hi\n\nAssistant:", False),
        (" Hello!<|eos|>", True),
        ("\n\nUser: Add 2 and 3\n\nAssistant:", False),
        (" 5<|eos|>", True),
        ("\n\n", False),
    ])
    assert (r.input_ids, r.labels) == (ids, labels)


def test_chatml_template_trains_im_end_not_newline(tok):
    t = copy.deepcopy(tok)
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    t.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    r = Renderer(t)
    out = r.render(CHAT)
    ids, labels = expected(t, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>", True),
        ("\n<|im_start|>user\nAdd 2 and 3<|im_end|>\n<|im_start|>assistant\n", False),
        ("5<|im_end|>", True),
        ("\n", False),
    ])
    assert (out.input_ids, out.labels) == (ids, labels)
    im_end = t.convert_tokens_to_ids("<|im_end|>")
    assert r.stop_token_ids() == sorted({t.eos_token_id, im_end})
    assert r.response_prefix() == ""  # ChatML's response starts right after the generation prompt


def test_response_prefix_is_the_template_text_before_the_content(tok):
    """posttrain's "A: {content}" and the plain-text "Assistant: {content}" both put a space before the
    content; generation removes it, so a generated response is the content alone."""
    from posttrain.models.tokenizer import DEFAULT_TEMPLATE

    assert Renderer(tok).response_prefix() == " "
    plain = copy.deepcopy(tok)
    plain.chat_template = DEFAULT_TEMPLATE
    assert Renderer(plain).response_prefix() == " "


def test_prompt_ids_are_the_rendered_prefix(tok):
    r = Renderer(tok)
    full = r.render(Conversation(CHAT.messages[:3]))
    prompt = r.prompt_ids(CHAT.messages[:2])
    assert full.input_ids[: len(prompt)] == prompt
    assert all(lab == IGNORE for lab in full.labels[: len(prompt)])
    assert all(lab != IGNORE for lab in full.labels[len(prompt):])


def test_doubled_bos_is_removed(tok):
    t = copy.deepcopy(tok)
    bos = t.bos_token_id
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    assert t("hi").input_ids[0] == bos  # this tokenizer adds BOS, and the template writes one too
    r = Renderer(t).render(CHAT)
    assert r.input_ids[0] == bos and r.input_ids[1] != bos


def test_bos_added_once_when_template_has_none(tok):
    t = copy.deepcopy(tok)
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", t.bos_token_id)])
    t.chat_template = t.chat_template.replace("{{ bos_token }}", "")
    r = Renderer(t).render(CHAT)
    assert r.input_ids[0] == t.bos_token_id and r.input_ids.count(t.bos_token_id) == 1 and r.labels[0] == IGNORE


def test_eos_equal_to_pad_keeps_the_stop_token_trained(tok):
    t = copy.deepcopy(tok)
    t.pad_token = t.eos_token
    r = Renderer(t)
    rows = [r.render(Conversation([Message("user", "Hi"), Message("assistant", "yo")])), r.render(CHAT)]
    batch = pad_batch(rows, t.pad_token_id)
    short = batch["labels"][0]
    n = len(rows[0].input_ids)
    assert short[n - 1].item() == t.eos_token_id  # the stop token is a target
    assert (short[n:] == IGNORE).all()  # the padding (same id) is not
    assert (batch["input_ids"][0, n:] == t.eos_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_drops_are_counted_not_trained(tok):
    r = Renderer(tok, max_seq_len=30)
    no_reply = Conversation([Message("user", "Hi")])
    long_prompt = Conversation([Message("user", "word " * 40), Message("assistant", "ok")])
    long_reply = Conversation([Message("user", "Hi"), Message("assistant", "apple " * 40)])
    rows, stats = render_all([no_reply, long_prompt, long_reply, CHAT], r)
    assert stats.examples == 4 and stats.kept == 2
    assert stats.dropped == {"no assistant turn": 1, "truncated: no response token left": 1}
    assert stats.truncated == 2  # long_reply and CHAT keep some trained tokens after truncation
    assert all(len(x.input_ids) == 30 for x in rows)
    assert stats.trained_tokens == sum(x.n_trained for x in rows) > 0


def test_template_without_prompt_mask_is_an_error(tok):
    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no generation prompt, no markers
    with pytest.raises(UserError, match="stop token|could not be located|every token is trained"):
        Renderer(t).render(Conversation([Message("user", ""), Message("assistant", "Hello")], where="x.jsonl:3"))


def test_labels_tensor_roundtrip(tok):
    r = Renderer(tok).render(CHAT)
    batch = pad_batch([r], tok.pad_token_id)
    assert torch.equal(batch["labels"][0], torch.tensor(r.labels))


# --- text documents, leading assistant turns, templates that refuse, empty turns ----------------


def test_text_row_is_bos_text_eos_without_the_template(tok):
    """`{"text": ...}` is plain LM data: `<bos> text <eos>`, no role markers, every token after the first trained
    (the first has nothing before it to predict it), as pretraining's `tokenize_documents` writes a document."""
    from posttrain.data.formats import to_example

    r = Renderer(tok).render(to_example({"text": "The river is silver."}, "text", "d.jsonl:1"))
    assert tok.convert_ids_to_tokens(r.input_ids) == [
        "<|bos|>", "T", "he", "Ġriver", "Ġis", "Ġsilver", ".", "<|eos|>"]
    assert r.input_ids == [1, 58, 281, 372, 276, 361, 20, 2]  # bos 1, eos 2 in the test tokenizer
    assert r.labels == [IGNORE, 58, 281, 372, 276, 361, 20, 2]
    assert r.n_trained == 7 and not r.truncated
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None  # a tokenizer without BOS (Qwen-style): the text, then EOS
    r = Renderer(no_bos).render(Conversation([Message("assistant", "The river")], document=True))
    assert (r.input_ids, r.labels) == ([58, 281, 372, 2], [IGNORE, 281, 372, 2])


def test_text_rows_truncate_drop_and_pack_like_other_examples(tok):
    r = Renderer(tok, max_seq_len=5)
    doc = Conversation([Message("assistant", "The river is silver.")], document=True)
    empty = Conversation([Message("assistant", " \n")], document=True)
    rows, stats = render_all([doc, empty], r)
    assert (rows[0].input_ids, rows[0].labels) == ([1, 58, 281, 372, 276], [IGNORE, 58, 281, 372, 276])
    assert stats.kept == 1 and stats.truncated == 1 and stats.dropped == {"empty text": 1}
    full = Renderer(tok).render(doc)
    chat = Renderer(tok).render(CHAT)
    packed = packed_batch([[full, chat]], tok.pad_token_id)
    assert packed["labels"][0].tolist() == [IGNORE] + full.labels[1:] + [IGNORE] + chat.labels[1:]
    assert packed["position_ids"][0].tolist() == list(range(8)) + list(range(len(chat.input_ids)))


def test_text_rows_through_sft_build_data(tok, tmp_path):
    from posttrain.recipes.sft import SFTConfig, build_data

    path = tmp_path / "text.jsonl"
    path.write_text('{"text": "The river is silver."}\n{"text": "The river"}\n')
    cfg = SFTConfig()
    cfg.data.path, cfg.data.max_seq_len = str(path), 16
    rows, units, _, _, stats, _ = build_data(cfg, tok, log=lambda *a: None)
    assert [r.input_ids for r in rows] == [[1, 58, 281, 372, 276, 361, 20, 2], [1, 58, 281, 372, 2]]
    assert stats.kept == 2 and stats.trained_tokens == 7 + 4 and units == [[0, 1]]


def test_chat_opening_with_an_assistant_turn(tok):
    """The prompt before a leading assistant turn is what the template writes for an empty conversation
    with the generation prompt (posttrain's: `<|bos|><|assistant|>A:`)."""
    from posttrain.models.tokenizer import DEFAULT_TEMPLATE

    conv = Conversation(CHAT.messages[2:], where="chat.jsonl:3")
    r = Renderer(tok).render(conv)
    assert (r.input_ids, r.labels) == expected(tok, [
        ("<|bos|><|assistant|>A:", False),
        (" Hello!<|eos|>", True),
        ("<|user|>Q: Add 2 and 3<|end|><|assistant|>A:", False),
        (" 5<|eos|>", True),
    ])
    plain = copy.deepcopy(tok)
    plain.chat_template = DEFAULT_TEMPLATE
    r = Renderer(plain).render(conv)
    assert (r.input_ids, r.labels) == expected(plain, [
        ("Assistant:", False), (" Hello!<|eos|>", True),
        ("\n\nUser: Add 2 and 3\n\nAssistant:", False), (" 5<|eos|>", True), ("\n\n", False),
    ])


# Llama-2 / Mistral style: roles must alternate starting with the user.
STRICT = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}{% endfor %}")


def test_template_that_refuses_a_conversation_is_one_line_naming_the_example(tok):
    from posttrain.models.tokenizer import POSTTRAIN_TEMPLATE

    strict = copy.deepcopy(tok)
    strict.chat_template = STRICT + POSTTRAIN_TEMPLATE
    r = Renderer(strict)
    assert r.render(Conversation(CHAT.messages[1:])).input_ids == Renderer(tok).render(
        Conversation(CHAT.messages[1:])).input_ids  # alternating chats render as before
    with pytest.raises(UserError) as e:
        render_all([Conversation(CHAT.messages[1:]), Conversation(CHAT.messages[2:], where="chat.jsonl:3")], r)
    assert str(e.value) == (
        "chat.jsonl:3: the chat template rejects this conversation: Conversation roles must alternate user/assistant")
    broken = copy.deepcopy(tok)
    broken.chat_template = "{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}"  # any exception, not only jinja's
    with pytest.raises(UserError) as e:
        Renderer(broken).render(Conversation(CHAT.messages[1:3], where="chat.jsonl:7"))
    assert str(e.value) == (
        'chat.jsonl:7: the chat template rejects this conversation: can only concatenate str (not "int") to str')


def test_empty_assistant_turns_are_dropped_and_counted(tok):
    """An empty turn would train only its stop token: the model would learn to answer nothing."""
    hi = Message("user", "Hi")
    empty = Conversation([hi, Message("assistant", "")])
    blank = Conversation([hi, Message("assistant", " \n\t")])
    middle = Conversation([hi, Message("assistant", ""), Message("user", "Add 2 and 3"), Message("assistant", "5")])
    rows, stats = render_all([empty, blank, middle, CHAT, Conversation([hi])], Renderer(tok))
    assert stats.dropped == {"empty assistant turn": 3, "no assistant turn": 1}
    assert stats.kept == 1 and rows[0].input_ids == Renderer(tok).render(CHAT).input_ids
