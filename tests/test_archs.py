"""The preference recipes on every tiny architecture (Llama, Qwen2, Mistral, GPT-2, GPT-NeoX): packed sequence
log-probs equal each sequence alone; `posttrain rm` (full and LoRA) trains and plain
`AutoModelForSequenceClassification` scores the saved model as posttrain does, at the response's last token (also
with pad == EOS), and with LoRA the merged model/ scores as the adapter on the base does; `posttrain dpo` (dpo and
the reference-free simpo, full and LoRA) trains, its cached reference equals a live forward of the starting model,
and what it saves loads with plain transformers (and peft) and generates.

Every model is a seeded random-init tiny model (hidden 32, 2 layers) with the session's BPE tokenizer; nothing is
downloaded. SFT on every architecture is tested in test_models.py.
"""

from __future__ import annotations

import contextlib
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import preference_rows, train_losses, write_jsonl
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from posttrain.config import load_config
from posttrain.data.collate import packed_batch
from posttrain.data.render import IGNORE, Renderer
from posttrain.data.types import Conversation, Message
from posttrain.models.forward import sequence_logps
from posttrain.models.load import load_tokenizer
from posttrain.models.tiny import ARCHS, tiny_model
from posttrain.recipes import dpo, rm

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)  # what pair_logps uses of acc
TURNS = [("What is 2 + 3?", "2 + 3 = 5."), ("Reverse the word stone.", "enots"), ("List 2 words.", "apple, river."),
         ("What is 7 + 1?", "It is 8.")]


@pytest.fixture(scope="module")
def bases(tok, tmp_path_factory):
    """`bases(arch, pad_is_eos=False)` -> a saved tiny model folder (cached). With `pad_is_eos` the tokenizer is
    saved as GPT-2's ships: no pad token and no chat template, so posttrain pads with EOS and renders with
    DEFAULT_TEMPLATE (whose turns end EOS + a blank line)."""
    root, cache = tmp_path_factory.mktemp("archs"), {}

    def get(arch: str, pad_is_eos: bool = False):
        if (arch, pad_is_eos) not in cache:
            t = copy.deepcopy(tok)
            if pad_is_eos:
                t.pad_token, t.chat_template = None, None
            d = root / f"{arch}{'-eos' if pad_is_eos else ''}"
            tiny_model(arch, t, seed=0, hidden=32, layers=2, heads=4).save_pretrained(d)
            t.save_pretrained(d)
            cache[arch, pad_is_eos] = d
        return cache[arch, pad_is_eos]

    return get


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", preference_rows(12))


def finite_curve(out) -> list[float]:
    curve = train_losses(out)
    assert len(curve) == 2 and all(math.isfinite(x) for x in curve), curve
    return curve


def alone_logp(model, row) -> float:
    """One sequence, no padding, no packing: full logits, log-softmax, the trained targets gathered."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1].float()
    targets = torch.tensor(row.labels[1:])
    trained = targets != IGNORE
    return torch.log_softmax(logits, -1)[trained].gather(1, targets[trained, None]).sum().item()


def rendered(tok, turns):
    r = Renderer(tok, 64)
    return [r.render(Conversation([Message("user", u), Message("assistant", a)])) for u, a in turns]


# --- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_sequence_logps_equal_each_sequence_alone(arch, bases, tok):
    """Rows of two and one documents (position ids restart, trailing padding, no attention mask: transformers
    builds the block-diagonal causal mask from the position ids, for rotary, partial rotary (GPT-NeoX) and learned
    absolute positions (GPT-2) alike) == each sequence through a plain forward, to 1e-5. Changing the first
    document of a row leaves the second's log-prob unchanged: no attention across documents."""
    model = AutoModelForCausalLM.from_pretrained(bases(arch)).eval()
    rows = rendered(tok, TURNS)
    batch = packed_batch([[rows[0], rows[1]], [rows[2]]], tok.pad_token_id, doc_ids=True)
    assert batch["input_ids"].shape[1] > len(rows[2].input_ids)  # the second row is padded
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, n_docs=3)
    for k in range(3):
        assert counts[k].item() == rows[k].n_trained
        assert sums[k].item() == pytest.approx(alone_logp(model, rows[k]), abs=1e-5), k

    other = packed_batch([[rows[3], rows[1]], [rows[2]]], tok.pad_token_id, doc_ids=True)
    with torch.no_grad():
        again, _ = sequence_logps(model, other, n_docs=3)
    assert again[1].item() == pytest.approx(sums[1].item(), abs=1e-5)
    assert abs(again[0].item() - sums[0].item()) > 1e-3  # the first documents do differ


# --- posttrain rm --------------------------------------------------------------------------------


def run_rm(base, data, out, *extra: str) -> dict:
    cfg = load_config(rm.RMConfig, None, [f"model={base}", f"data={data}", f"output_dir={out}", "optim.lr=1e-3",
                                          "batch_size=4", "micro_batch_size=2", "max_steps=2", "data.max_seq_len=64",
                                          *extra])
    return rm.main(cfg)


HF_NAME = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gpt2": "GPT2", "gpt_neox": "GPTNeoX"}
SCORED = [Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "2 + 3 = 5.")]),
          Conversation([Message("user", "List 2 words."), Message("assistant", "apple, river."),
                        Message("user", "Now in upper case."), Message("assistant", "APPLE, RIVER.")]),
          Conversation([Message("user", "Reverse the word stone."), Message("assistant", "enots")])]


def check_reward_model(out, base):
    """Plain HF loads model/ and, on the scored tokens (unpadded and as a right-padded batch), gives posttrain's
    scores (`load_scorer` + `score_examples`) to 1e-5; those tokens end with the response's last token, and the
    score is the head applied to the hidden state there. Returns the scorer's tokenizer."""
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    model, tok, pad = rm.load_scorer(str(out / "model"))
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == pad == load_tokenizer(str(base)).pad_token_id
    got = [row["score"] for row in rm.score_examples(model, tok, SCORED, pad, max_seq_len=64)]
    renderer = Renderer(tok, 64)
    stop = set(renderer.stop_token_ids())
    seqs = [rm.scored(renderer.render(c), stop, pad) for c in SCORED]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    with torch.no_grad():
        for i, (s, conv) in enumerate(zip(seqs, SCORED)):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            out1 = hf(input_ids=torch.tensor([s]), output_hidden_states=True)
            assert out1.logits[0, 0].item() == pytest.approx(got[i], abs=1e-5)
            at_last = hf.score(out1.hidden_states[-1][0, -1]).item()
            assert at_last == pytest.approx(got[i], abs=1e-5)
            assert tok.decode(s).endswith(conv.messages[-1].content)  # the last token is the response's
        batched = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert batched.tolist() == pytest.approx(got, abs=1e-5)
    return tok


@pytest.mark.parametrize("arch", ARCHS)
def test_rm_trains_and_plain_hf_scores_the_same(arch, bases, prefs, tmp_path):
    out = tmp_path / "rm"
    run_rm(bases(arch), prefs, out)
    finite_curve(out)
    config = AutoModelForSequenceClassification.from_pretrained(out / "model").config
    assert config.architectures == [f"{HF_NAME[arch]}ForSequenceClassification"]
    tok = check_reward_model(out, bases(arch))
    assert tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
def test_rm_lora_merges_into_a_plain_reward_model(arch, bases, prefs, tmp_path):
    """LoRA (peft SEQ_CLS), 2 steps: finite losses; adapter/ holds the LoRA weights of the body and the head `score`
    in full (no LoRA on the head). model/ is the merged reward model: plain HF loads it and scores as posttrain does
    (`check_reward_model`), and its scores equal posttrain's scoring of the adapter model (adapter/ loaded with peft
    on the base as a sequence classifier, with the run's seeded initial head) to 1e-5, as do peft's own logits of
    each row alone. The head trained (it differs from the initial one) and the body moved."""
    from peft import PeftModel
    from safetensors.torch import load_file

    base, out = bases(arch), tmp_path / "rm"
    run_rm(base, prefs, out, "lora.enabled=true", "lora.r=4")
    finite_curve(out)
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k for k in saved) and [k for k in saved if "score" in k] == ["base_model.model.score.weight"]
    tok = check_reward_model(out, base)
    merged_model, _, pad = rm.load_scorer(str(out / "model"))
    merged = [r["score"] for r in rm.score_examples(merged_model, tok, SCORED, pad, max_seq_len=64)]

    torch.manual_seed(0)  # the run's initial head: seeded with `seed` (0) before loading
    with rm._quiet_hf():
        start = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    initial_head = start.score.weight.detach().clone()
    body = {k: v.detach().clone() for k, v in start.state_dict().items() if not k.startswith("score.")}
    adapted = PeftModel.from_pretrained(start, str(out / "adapter")).eval()
    ours = [r["score"] for r in rm.score_examples(adapted, tok, SCORED, pad, max_seq_len=64)]
    assert ours == pytest.approx(merged, abs=1e-5)
    renderer = Renderer(tok, 64)
    stop = set(renderer.stop_token_ids())
    with torch.no_grad():
        for conv, want in zip(SCORED, merged):
            s = rm.scored(renderer.render(conv), stop, pad)
            assert adapted(input_ids=torch.tensor([s])).logits[0, 0].item() == pytest.approx(want, abs=1e-5)
    head = merged_model.score.weight.detach()
    assert torch.equal(head, saved["base_model.model.score.weight"])
    assert (head - initial_head).abs().max().item() > 1e-4  # the head trained in full
    moved = merged_model.state_dict()
    assert max((moved[k] - v).abs().max().item() for k, v in body.items()) > 1e-6  # the merged LoRA changed the body


def test_rm_with_pad_equal_to_eos(bases, prefs, tmp_path):
    """A GPT-2-style tokenizer (no pad token, no chat template): posttrain pads with EOS, and EOS also closes
    every assistant turn. HF's head pools at the last token that is not the pad id; posttrain cuts the scored
    tokens after the response's last content token (the closing EOS and the blank line after it removed), so
    plain HF reads exactly there, for the multi-turn row too, where an EOS closes the first assistant turn."""
    base = bases("gpt2", pad_is_eos=True)
    assert load_tokenizer(str(base)).pad_token_id == load_tokenizer(str(base)).eos_token_id
    out = tmp_path / "rm"
    run_rm(base, prefs, out)
    finite_curve(out)
    tok = check_reward_model(out, base)
    assert tok.pad_token_id == tok.eos_token_id
    multi = Renderer(tok, 64).render(SCORED[1]).input_ids
    assert multi.count(tok.eos_token_id) == 2  # an EOS inside the row, and the one that closes it


# --- posttrain dpo -------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("loss", ["dpo", "simpo"])
@pytest.mark.parametrize("arch", ARCHS)
def test_dpo_trains_and_saves_a_plain_model(arch, loss, lora, bases, prefs, tmp_path):
    """2 steps: finite losses (dpo: exactly log 2 at step 1, the policy is the reference). dpo's cached reference
    log-probs equal a live forward of the starting model (the base; with LoRA, the base with zero adapters) on the
    same micro-batches to 1e-6, and each sequence alone to 1e-5 (or 1e-6 relative); simpo caches none. model/ loads with plain
    AutoModelForCausalLM, differs from the base and generates; with LoRA, adapter/ loads on the base with peft and
    gives model/'s logits (model/ is the merged model)."""
    from peft import PeftModel

    base, out, micro = bases(arch), tmp_path / "dpo", 2
    cfg = load_config(dpo.DPOConfig, None, [
        f"model={base}", f"data={prefs}", f"output_dir={out}", f"loss={loss}", "optim.lr=1e-3", "batch_size=4",
        f"micro_batch_size={micro}", "max_steps=2", "data.max_seq_len=64", f"lora.enabled={str(lora).lower()}"])
    dpo.main(cfg)
    curve = finite_curve(out)
    start = AutoModelForCausalLM.from_pretrained(base).eval()

    if loss == "dpo":
        assert curve[0] == pytest.approx(math.log(2), abs=1e-6)
        cached = torch.load(out / "reference" / "logps.pt")["train"]
        tok = load_tokenizer(str(base))
        pairs, _, _ = dpo.build_data(cfg, tok)
        assert cached.shape == (len(pairs), 2)
        with torch.no_grad():
            for s in range(0, len(pairs), micro):
                chunk = list(range(s, min(s + micro, len(pairs))))
                live, _ = dpo.pair_logps(start, CPU, pairs, chunk, tok.pad_token_id)
                assert (live - cached[chunk]).abs().max().item() <= 1e-6
        for i in range(0, len(pairs), 4):
            want = [alone_logp(start, side) for side in pairs[i]]
            assert cached[i].tolist() == pytest.approx(want, rel=1e-6, abs=1e-5)  # fp32 sums of ~40 terms
    else:
        assert not (out / "reference").exists()

    policy = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids = torch.tensor([load_tokenizer(str(base))(
        load_tokenizer(str(base)).apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                                      add_generation_prompt=True, tokenize=False),
        add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits
        assert (logits - start(input_ids=ids).logits).abs().max().item() > 1e-4  # it trained
        if lora:
            adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out / "adapter"))
            torch.testing.assert_close(adapted.eval()(input_ids=ids).logits, logits, rtol=0, atol=1e-5)
    assert (out / "adapter" / "adapter_config.json").exists() == lora
    gen = policy.generate(ids, max_new_tokens=4, do_sample=False)
    assert ids.shape[1] < gen.shape[1] <= ids.shape[1] + 4 and torch.equal(gen[0, : ids.shape[1]], ids[0])
