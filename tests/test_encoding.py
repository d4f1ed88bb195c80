"""Token ids and label masking: only response tokens (and EOS) are trained and scored."""

from __future__ import annotations

import pytest

from harness.run.encoding import IGNORE_INDEX, encode, encode_all, length_stats
from harness.suite.config import DataSpec
from harness.suite.prompts import Example

from .conftest import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def spec(**kw) -> DataSpec:
    return DataSpec(path="x", prompt_template="p", response_template="r", **kw)


def test_prompt_masked_response_and_eos_labelled(tok):
    e = encode(Example("a", "### Response:\n", "Oslo, Monday: 3°C."), tok, spec())
    assert e.labels[: e.prompt_len] == (IGNORE_INDEX,) * e.prompt_len
    assert e.labels[e.prompt_len:] == e.input_ids[e.prompt_len:]
    assert e.input_ids[-1] == tok.eos_token_id
    assert e.input_ids[0] == tok.bos_token_id  # plain prompts get the tokenizer's BOS
    text = tok.decode(e.input_ids[e.prompt_len:], skip_special_tokens=True)
    assert text == "Oslo, Monday: 3°C."


def test_trailing_space_moves_to_response(tok):
    e = encode(Example("a", "Summary: ", "The cat"), tok, spec())
    prompt = tok.decode(e.prompt_ids, skip_special_tokens=True)
    response = tok.decode(e.input_ids[e.prompt_len:], skip_special_tokens=True)
    assert prompt == "Summary:" and response == " The cat"


def test_chat_template_applied_without_double_bos(tok):
    e = encode(Example("a", "hello", "hi"), tok, spec(chat_template=True, system_prompt="S"))
    prompt = tok.decode(e.prompt_ids)
    assert prompt == "<|system|>S\n<|user|>hello\n<|assistant|>"
    assert e.input_ids[0] != tok.bos_token_id


def test_conversation_messages_go_through_chat_template(tok):
    ex = Example("c", "q2", "a2", messages=(("user", "q1"), ("assistant", "a1"), ("user", "q2")))
    e = encode(ex, tok, spec())
    assert tok.decode(e.prompt_ids) == "<|user|>q1\n<|assistant|>a1\n<|user|>q2\n<|assistant|>"


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_cuts_prompt_keeps_response(tok, side):
    long_prompt = "word " * 200
    e = encode(Example("a", long_prompt + "END", "short answer"), tok,
               spec(max_length=40, truncation_side=side))
    assert len(e.input_ids) == 40 and e.truncated and e.full_len > 40
    assert tok.decode(e.input_ids[e.prompt_len:], skip_special_tokens=True) == "short answer"
    kept = tok.decode(e.prompt_ids, skip_special_tokens=True)
    assert kept.endswith("END") == (side == "left")


def test_drop_longer_and_length_stats(tok):
    exs = [Example(str(i), "x " * (5 + 30 * (i % 2)), "y") for i in range(10)]
    enc, stats = encode_all(exs, tok, spec(max_length=24), drop_longer=True)
    assert stats["n"] == 10 and stats["dropped_too_long"] == 5 and len(enc) == 5
    assert stats["share_truncated"] == 0.5
    assert length_stats([])["n"] == 0
