"""Identifiers in the formats OpenAI uses (the Realtime API reference's prefixes:
``sess_``, ``item_``, ``resp_``, ``event_``...)."""

from __future__ import annotations

import random
import secrets
import string

_BASE62 = string.digits + string.ascii_letters


class IdFactory:
    """Makes ``event_``, ``item_``, ``resp_``... ids.

    Pass a seeded ``random.Random`` for deterministic ids in tests.
    Event ids are a per-session random stem plus a counter: unique, and cheap
    enough for the hot path.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng
        self._stem = self._chars(12)
        self._counter = 0

    def _chars(self, n: int, alphabet: str = _BASE62) -> str:
        if self._rng is not None:
            return "".join(self._rng.choice(alphabet) for _ in range(n))
        # Random bytes read at once (secrets.choice reads the OS per character: 16 us an
        # id); a byte past the largest multiple of the alphabet's size is dropped, so every
        # character stays equally likely.
        size = len(alphabet)
        below = 256 - 256 % size
        chars: list[str] = []
        while len(chars) < n:
            chars += [alphabet[b % size] for b in secrets.token_bytes(n + 8) if b < below]
        return "".join(chars[:n])

    def new(self, prefix: str, length: int = 21) -> str:
        return f"{prefix}_{self._chars(length)}"

    def event_id(self) -> str:
        self._counter += 1
        n = self._counter
        digits = []
        for _ in range(9):
            n, r = divmod(n, 62)
            digits.append(_BASE62[r])
        return "event_" + self._stem + "".join(reversed(digits))

    def call_id(self) -> str:
        return self.new("call", 16)
