"""replies.normalize: the one place that turns a server's message into a stage's text (issue 15)."""

from __future__ import annotations

import pytest

from personaloom.backends.base import ChatRequest, ChatResult, Message, SamplingParams
from personaloom.replies import json_object, normalize, split_reasoning

REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], params=SamplingParams(max_tokens=64),
                      metadata={"stage": "critic.depth"})


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("User 1: hi\nUser 2: hello", "User 1: hi\nUser 2: hello"),
        ("<think>\nUser 1: draft\n{\"winner\": \"A\"}\n</think>\n\n{\"winner\": \"B\"}", "{\"winner\": \"B\"}"),
        ("  <THINK>x</THINK>answer", "answer"),
        ("<thinking>plan</thinking>\nUser 1: hi", "User 1: hi"),
        ("<reasoning>r</reasoning> a", "a"),
        ("◁think▷r◁/think▷a", "a"),
        ("[THINK]r[/THINK]a", "a"),
        ("<|begin_of_thought|>r<|end_of_thought|>a", "a"),
        # DeepSeek-R1's chat template opens the block in the prompt: only the closing tag comes back.
        ("so the answer is B.\n</think>\n\n{\"winner\": \"B\"}", "{\"winner\": \"B\"}"),
        # gpt-oss harmony served raw.
        ("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>done<|return|>",
         "done"),
        # Cut off while thinking: no answer at all.
        ("<think>still thinking about User 1: and", ""),
    ],
)
def test_split_reasoning(text: str, answer: str) -> None:
    assert split_reasoning(text)[1] == answer


def test_reasoning_is_stripped_and_dropped() -> None:
    raw = ChatResult(texts=['<think>{"winner": "A"}</think>{"winner": "B"}'], finish_reason="stop")
    clean = normalize(raw, REQUEST)
    assert clean.ok and clean.text == '{"winner": "B"}' and clean.reasoning is None
    assert json_object(clean.text) == {"winner": "B"}


def test_reasoning_field_only_is_a_failure_naming_the_fix() -> None:
    raw = ChatResult(texts=[""], reasoning=["The user asks..."], finish_reason="stop")
    bad = normalize(raw, REQUEST)
    assert not bad.ok and bad.texts == []
    assert bad.error is not None
    assert "reasoning only" in bad.error and "message.reasoning_content/reasoning" in bad.error
    assert "enable_thinking: false" in bad.error and "reasoning_effort=none" in bad.error
    assert "critic.depth" in bad.error and "max_tokens 64" in bad.error


def test_thinking_cut_at_max_tokens_says_so() -> None:
    bad = normalize(ChatResult(texts=["<think>hmm"], finish_reason="length"), REQUEST)
    assert bad.error is not None and "spent all max_tokens thinking" in bad.error and "<think> block" in bad.error


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_reply_is_a_failure(text: str) -> None:
    bad = normalize(ChatResult(texts=[text], finish_reason="stop"), REQUEST)
    assert not bad.ok and bad.error is not None and "empty reply" in bad.error


def test_failed_results_pass_through() -> None:
    failed = ChatResult(error="HTTP 500: boom")
    assert normalize(failed, REQUEST) == failed


def test_plain_answers_are_untouched() -> None:
    raw = ChatResult(texts=["User 1: I think <b>this</b> is fine"], finish_reason="stop")
    assert normalize(raw, REQUEST).text == raw.text
    # Without any marker character the result itself comes back (no copy per call); brackets that are not a
    # marker still go through the full reader and come back unchanged.
    plain = ChatResult(texts=["User 1: Hi!\nUser 2: Hello."], finish_reason="stop")
    assert normalize(plain, REQUEST) is plain
    for text in ("User 1: [laughs] fine", "User 1: a < b", "◁ not a marker"):
        got = normalize(ChatResult(texts=[text], finish_reason="stop"), REQUEST)
        assert got.ok and got.text == text
    # The fast path never lets reasoning or a blank answer through.
    assert normalize(ChatResult(texts=["<think>hm</think>Yes"], finish_reason="stop"), REQUEST).text == "Yes"
    assert not normalize(ChatResult(texts=["ok", " "], finish_reason="stop"), REQUEST).ok
    assert normalize(ChatResult(texts=["Yes"], reasoning=["hm"], finish_reason="stop"), REQUEST).reasoning is None


@pytest.mark.parametrize(
    ("message", "param", "field"),
    [
        ("Unrecognized request argument supplied: top_k", None, "top_k"),  # OpenAI, Azure OpenAI
        ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
         "instead.", "max_tokens", "max_tokens"),  # OpenAI reasoning models
        ("Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is "
         "supported.", "temperature", "temperature"),
        ("property 'top_k' is unsupported, please remove it", None, "top_k"),  # Groq-style
        ('Invalid JSON payload received. Unknown name "top_k": Cannot find field.', None, "top_k"),  # Gemini-style
        ("[{'type': 'extra_forbidden', 'loc': ['body', 'seed'], 'msg': 'Extra inputs are not permitted'}]", None,
         "seed"),  # FastAPI gateways
        ("model 'llama3' not found", None, None),
        ("This model's maximum context length is 2048 tokens.", None, None),
    ],
)
def test_the_refused_field_is_read_from_the_servers_words(message: str, param: str | None, field: str | None) -> None:
    from personaloom.backends.openai_compat import rejected_field

    sent = {"model": "m", "messages": [], "temperature": 0.7, "top_k": 40, "top_p": 1.0, "seed": 1,
            "max_tokens": 64}
    assert rejected_field(message, param, sent) == field


def test_content_as_a_list_of_parts() -> None:
    from personaloom.backends.openai_compat import _content_text

    assert _content_text([{"type": "text", "text": "User 1: hi"}, {"type": "image_url"}]) == "User 1: hi"
    assert _content_text(None) == "" and _content_text("x") == "x"


def test_a_complaint_about_a_fields_value_is_no_refusal_of_the_field() -> None:
    from personaloom.backends.openai_compat import rejected_field

    vllm = ("'max_tokens' or 'max_completion_tokens' is too large: 3000. This model's maximum context length is "
            "4096 tokens and your request has 1200 input tokens (3000 > 4096 - 1200).")
    assert rejected_field(vllm, None, {"max_tokens": 3000}) is None
