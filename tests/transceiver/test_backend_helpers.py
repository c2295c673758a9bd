"""Pure helpers of the local backend: clause splitting and the LLM's chat history."""

from __future__ import annotations

from tests.transceiver.requests import request
from transceiver.backends.conversation import chat_messages
from transceiver.backends.local import split_clause


def test_split_clause_at_sentence_end() -> None:
    assert split_clause("Hello there. How", first=True) == ("Hello there.", " How")
    assert split_clause("Hello there", first=False) is None


def test_first_clause_is_short() -> None:
    assert split_clause("Well, I think that maybe, ok", first=True) == (
        "Well, I think that maybe,",
        " ok",
    )
    words = "one two three four five six "
    assert split_clause(words, first=True) == ("one two", " three four five six ")
    assert split_clause("one two", first=True) is None  # "two" may not be a whole word yet
    assert split_clause(words, first=False) is None  # later clauses wait for punctuation


def test_later_clauses_split_at_commas_when_long() -> None:
    text = "This is a rather long clause that keeps going and going and going on, and on"
    clause, rest = split_clause(text, first=False) or ("", "")
    assert clause.endswith(",") and rest == " and on"


def test_chat_messages_cover_every_item_type() -> None:
    messages = chat_messages(
        request(
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": "what's the weather"}],
            },
            {
                "type": "function_call",
                "name": "get_weather",
                "call_id": "call_1",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call", "name": "get_time", "call_id": "call_2", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "It is sunny."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": ""}],
            },
        )
    )
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "what's the weather"}
    calls = messages[2]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]  # parallel calls: one turn
    assert calls[1]["function"]["arguments"] == "{}"
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert messages[4] == {"role": "assistant", "content": "It is sunny."}
    assert len(messages) == 5  # the empty transcript adds nothing
