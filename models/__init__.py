"""Engines behind small interfaces: audio conversion, VAD, STT, LLM, TTS."""
