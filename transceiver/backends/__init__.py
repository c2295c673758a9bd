"""Backends: ``mock`` (deterministic), ``local`` (VAD -> STT -> LLM -> TTS), ``openai`` (proxy)."""
