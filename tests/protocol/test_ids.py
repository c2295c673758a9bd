"""Ids in OpenAI's formats (transceiver/protocol/ids.py)."""

from __future__ import annotations

import random
import re
from collections import Counter

from transceiver.protocol.ids import IdFactory


def test_ids_have_their_prefix_and_length_in_base62_and_do_not_repeat() -> None:
    ids = IdFactory()
    made = [ids.new("item") for _ in range(5000)]
    assert all(re.fullmatch(r"item_[0-9A-Za-z]{21}", i) for i in made)
    assert len(set(made)) == len(made)
    assert re.fullmatch(r"call_[0-9A-Za-z]{16}", ids.call_id())
    first, second = ids.event_id(), ids.event_id()
    assert first != second and first.startswith("event_") and len(first) == len(second)


def test_every_character_is_about_as_likely() -> None:
    # Bytes are mapped onto the 62 characters without the bias a plain modulo would give
    # the first 8 (256 = 4 * 62 + 8): each is expected 1/62 of the time.
    counts = Counter("".join(IdFactory().new("x")[2:] for _ in range(6000)))
    expected = 6000 * 21 / 62
    assert len(counts) == 62
    assert all(abs(n - expected) < 0.15 * expected for n in counts.values())


def test_a_seeded_rng_gives_the_same_ids() -> None:
    a, b = IdFactory(random.Random(7)), IdFactory(random.Random(7))
    assert [a.new("resp") for _ in range(3)] == [b.new("resp") for _ in range(3)]
