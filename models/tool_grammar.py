"""A forced tool call for the embedded model: a GBNF grammar that admits only a call.

When the Realtime ``tool_choice`` is ``required`` or names a function, the embedded model
(models/llm.py, :class:`LlamaCppLlm`) must call a tool; a 135M-parameter model does not
reliably do so when asked. llama.cpp samples under a grammar instead (GBNF, built here
from a JSON schema with llama-cpp-python's converter), so the reply can only be
``{"name": <one of the tools>, "arguments": <an object the tool's parameters admit>}``.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def call_schema(functions: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The JSON schema of a call of one of ``names`` (chat-completions ``function`` dicts)."""
    by_name = {str(fn.get("name")): fn for fn in functions}
    options = []
    for name in names:
        params = by_name.get(name, {}).get("parameters")
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": params if isinstance(params, dict) and params else _ANY_OBJECT,
                },
                "required": ["name", "arguments"],
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


@lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


def call_grammar(functions: list[dict[str, Any]], names: list[str]) -> Any:
    """A ``LlamaGrammar`` for a call of one of ``names``. A parameters schema the converter
    cannot take falls back to any JSON object for the arguments."""
    schema = call_schema(functions, names)
    try:
        return _grammar(json.dumps(schema, sort_keys=True))
    except Exception as exc:  # the converter's own errors: no common type
        logger.info("tool parameters schema not usable as a grammar (%s); any object", exc)
        plain = [{"name": name} for name in names]
        return _grammar(json.dumps(call_schema(plain, names), sort_keys=True))


def parse_call(text: str, names: list[str]) -> tuple[str, str] | None:
    """``(name, arguments JSON)`` of a grammar-constrained reply, or ``None`` if it is not
    a complete call (cut off by ``max_tokens``)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments")
    if not isinstance(args, dict):
        return None
    return str(obj["name"]), json.dumps(args, ensure_ascii=False)
