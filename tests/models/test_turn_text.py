"""The words' end-of-turn score (models/turn_text.py) on the bundled SmolLM2."""

from __future__ import annotations

import pytest

from models.turn_text import TextTurn, normalise
from transceiver.turns import TEXT_THRESHOLD


@pytest.fixture(scope="module")
def text_turn() -> TextTurn:
    return TextTurn()


def test_normalise_drops_punctuation_and_case() -> None:
    assert normalise("Send the report TO... my  manager?") == "send the report to my manager"
    assert normalise("It's six one seven,") == "it's six one seven"


@pytest.mark.parametrize(
    "cut", ["I want to go to", "Schedule a meeting with", "I called the bank and", "The problem is"]
)
def test_a_sentence_cut_mid_way_scores_below_the_threshold(text_turn: TextTurn, cut: str) -> None:
    assert text_turn.log_probability(cut) < TEXT_THRESHOLD


@pytest.mark.parametrize(
    "whole",
    [
        "What is the capital of Australia?",
        "Turn off the lights in the kitchen.",
        "Why is the sky blue?",
    ],
)
def test_a_whole_sentence_scores_above_the_threshold(text_turn: TextTurn, whole: str) -> None:
    assert text_turn.log_probability(whole) > TEXT_THRESHOLD


def test_empty_text_is_no_evidence(text_turn: TextTurn) -> None:
    assert text_turn.log_probability(" ,. ") == 0.0


def test_a_long_turn_is_scored_on_its_last_words(text_turn: TextTurn) -> None:
    long = "I would like to tell you about my day " * 60 + "and then I went to"
    assert text_turn.log_probability(long) < TEXT_THRESHOLD
