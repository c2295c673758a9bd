"""Transceiver configuration: CLI flags and ``RELAY_*`` environment variables."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, NamedTuple, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Sessions per CPU core one local-pipeline transceiver holds with end of speech -> first
# audio under 1 s at p90 (`python -m bench capacity`, bench/results.md): the local backend's
# default --max-sessions, so the default scales with the machine.
LOCAL_SESSIONS_PER_CORE = 0.5


def local_max_sessions(cores: int | None = None) -> int:
    """The local backend's default --max-sessions on ``cores`` (default: this machine's)."""
    return max(1, int(LOCAL_SESSIONS_PER_CORE * (cores or os.cpu_count() or 1)))


class VoiceEntry(NamedTuple):
    """One ``--voices`` entry: a session voice name, a piper voice, maybe a speaker."""

    name: str
    path: str
    speaker: int | None


def parse_voice(entry: str) -> VoiceEntry:
    """``NAME=PATH[#SPEAKER]``; ``ValueError`` saying so for anything else."""
    name, sep, target = entry.partition("=")
    path, _, speaker = target.partition("#")
    if not sep or not name.strip() or not path.strip() or (speaker and not speaker.isdigit()):
        raise ValueError(f"{entry!r} is not NAME=PATH[#SPEAKER]")
    return VoiceEntry(name.strip(), path.strip(), int(speaker) if speaker else None)


def parse_stt_model(entry: str) -> tuple[str, str]:
    """One ``--stt-models`` entry, ``NAME=MODEL``, as (name, model); ``ValueError`` saying so
    for anything else."""
    name, sep, model = (part.strip() for part in entry.partition("="))
    if not sep or not name or not model:
        raise ValueError(f"{entry!r} is not NAME=MODEL")
    return name, model


class TransceiverSettings(BaseSettings):
    # An empty variable (`RELAY_X=` in a .env file or compose) means unset, not "".
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address the transceiver listens on.")
    port: int = Field(8100, description="Port the transceiver listens on.")
    backend: Literal["mock", "local", "openai"] = Field(
        "local", description="Backend to run: mock, local (VAD, STT, LLM, TTS) or openai (proxy)."
    )
    max_sessions: int = Field(
        1000,
        description="Sessions this transceiver accepts at once (local backend: default "
        f"{LOCAL_SESSIONS_PER_CORE:g} per CPU core, at least 1; see the README's sizing).",
    )
    link_socket: str | None = Field(
        None,
        description="Also listen on this Unix socket (a path), with the same endpoints and "
        "secret as the port: a relay on this machine links over it instead of TCP, which "
        "costs less per frame. serve gives each of its transceivers one.",
    )
    max_frame_bytes: int = Field(32 * 1024 * 1024, description="Largest WebSocket frame.")
    drain_timeout_s: float = Field(
        30.0,
        description="On SIGTERM: refuse new sessions, let running ones go on this long, then "
        "close them with an error (1012, service restart).",
    )
    link_secret: str | None = Field(
        None,
        description="Secret the relay must send (Authorization: Bearer) on every request but "
        "/healthz; the same as the relay's. Give it as the environment variable, not an "
        "option. Without it the transceiver does not start, unless --insecure-no-link-secret.",
    )
    insecure_no_link_secret: bool = Field(
        False,
        description="Run without a link secret: anyone who reaches the port gets sessions, "
        "bypassing the relay's API keys (serve always gives its transceivers a secret).",
    )
    max_input_audio_s: float = Field(
        900.0,
        ge=60,
        description="mock and local backends: most seconds of audio the input audio buffer, "
        "or one conversation.item.create, holds; more is refused with an error event.",
    )
    max_conversation_audio_s: float = Field(
        1200.0,
        ge=60,
        description="mock and local backends: most seconds of audio a session's conversation "
        "keeps in all items; past it the oldest items' audio is let go (their transcripts "
        "and text stay).",
    )
    prompts: str | None = Field(
        None,
        description="mock and local backends: the prompt library a session's 'prompt' names: "
        "a directory with DIR/<id>.md, or DIR/<id>/<version>.md per version; {{name}} in the "
        "text is the variable 'name'. Unset: a 'prompt' is refused with an error.",
    )
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log format: text or json.")

    # OpenAI proxy backend
    upstream_url: str = Field(
        "wss://api.openai.com/v1/realtime",
        description="openai backend: the upstream Realtime WebSocket URL (OpenAI, Azure "
        "OpenAI or any compatible server).",
    )
    upstream_api_key: str | None = Field(
        None,
        description="openai backend: the server-side key sent upstream (default: the "
        "OPENAI_API_KEY environment variable). Clients never see it.",
    )
    upstream_header: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="openai backend: extra upstream headers as NAME:VALUE (comma-separated), "
        "e.g. api-key:... for Azure.",
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="openai backend: models clients may ask for (comma-separated; empty: any).",
    )
    model_map: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="openai backend: CLIENT=UPSTREAM model renames (comma-separated), e.g. "
        "gpt-realtime=gpt-realtime-mini.",
    )
    instructions_prefix: str | None = Field(
        None,
        description="openai backend: server-side instructions put before the client's own.",
    )
    upstream_open_timeout_s: float = Field(
        10.0, description="openai backend: give up connecting upstream after this long."
    )
    fallback: Literal["none", "local", "mock"] = Field(
        "none",
        description="openai backend: when the upstream cannot be reached, is at capacity or "
        "drops a session, go on with this backend (local: the local pipeline, loaded at "
        "start; mock: for tests and demos) and the conversation so far, instead of closing.",
    )
    local_turn_detection: bool = Field(
        False,
        description="openai backend: run the client's turn detection (server_vad, "
        "semantic_vad) here and send upstream only the speech, with turn detection off "
        "upstream: this server commits and creates the responses; clients see their own "
        "turn detection and speech events as usual.",
    )
    mirror_max_items: int = Field(
        500,
        ge=1,
        description="openai backend: the most conversation items a session's proxy keeps "
        "(the newest) to replay into a fallback.",
    )
    mirror_max_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="openai backend: the most bytes of items (as JSON, without audio) and of "
        "in-progress response text a session's proxy keeps for a fallback.",
    )

    # Local backend: STT
    stt_model: str | None = Field(
        None, description="faster-whisper model name or path (default: bundled tiny.en)."
    )
    stt_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="faster-whisper models for session transcription model names: "
        "NAME=MODEL,... (for example gpt-4o-transcribe=/models/whisper-small-ct2). Every "
        "other name (whisper-1, gpt-4o-mini-transcribe, ...) uses --stt-model.",
    )
    stt_device: str = Field("cpu", description="STT device: cpu, cuda or auto.")
    stt_compute_type: str = Field("int8", description="STT compute type (int8, float16...).")
    stt_language: str | None = Field("en", description="Default transcription language.")
    stt_threads: int = Field(0, description="STT CPU threads (0: library default).")
    stt_short_window: bool = Field(
        True, description="Encode short utterances with a shortened Whisper window (faster)."
    )
    vad: Literal["webrtc", "silero"] = Field(
        "webrtc",
        description="The server VAD's frame classifier: webrtc (webrtcvad, about 7 us a "
        "frame) or silero (Silero VAD v5 gating webrtcvad, about 130 us a frame; tells "
        "speech from noise, python -m bench vad; the load generator's and the mock's "
        "synthetic speech is not speech to it, so it is for real voices).",
    )
    vad_model: str | None = Field(
        None,
        description="Silero VAD ONNX file (default: the one scripts/fetch-smart-turn installs).",
    )
    speculative_stt: bool = Field(
        True, description="Start transcribing when silence begins, before the turn ends."
    )
    preemptive_reply: bool = Field(
        True,
        description="Generate the reply during the silence window, once the speculative "
        "transcript is ready; kept only if the turn ends as expected.",
    )
    # Local backend: LLM
    llm_url: str | None = Field(
        None,
        description="OpenAI-compatible chat-completions base URL (e.g. Ollama's "
        "http://127.0.0.1:11434/v1). Unset: the embedded llama.cpp model.",
    )
    llm_model: str = Field("default", description="Model name sent to the LLM URL.")
    llm_api_key: str | None = Field(None, description="API key for the LLM URL.")
    llm_gguf: str | None = Field(
        None, description="GGUF file for the embedded LLM (default: bundled SmolLM2-135M)."
    )
    llm_context_tokens: int = Field(2048, description="LLM context window, in tokens.")
    llm_threads: int | None = Field(None, description="llama.cpp threads (default: all).")
    llm_max_tokens: int | None = Field(
        None,
        description="Most tokens in a reply, whatever max_output_tokens asks (a reply cut "
        "there ends incomplete, reason max_output_tokens). Unset: max_output_tokens 'inf' "
        "means up to the LLM's context window.",
    )
    llm_temperature: float = Field(0.7, description="LLM sampling temperature.")
    # Local backend: TTS
    tts_voice: str | None = Field(
        None, description="Piper voice .onnx path (default: bundled en_US-joe-medium)."
    )
    tts_speaker: int | None = Field(None, description="Speaker id for multi-speaker voices.")
    voices: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Piper voices for session voice names: NAME=PATH[#SPEAKER],... (for "
        "example marin=/models/amy.onnx,cedar=/models/libritts.onnx#12). Every other name "
        "(OpenAI's alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar, or a "
        "custom one) speaks with the default voice (--tts-voice).",
    )
    tts_lead_ms: int = Field(500, description="How far output audio may run ahead of real time.")
    # Local backend: end of turn (models/turn.py, Smart Turn v3.2)
    turn_model: str | None = Field(
        None,
        description="End-of-turn model, a Smart Turn v3.2 .onnx path (default: the file "
        "scripts/fetch-smart-turn installs in <venv>/share/realtime-relay).",
    )
    turn_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="End-of-turn probability above which the turn counts as complete.",
    )
    turn_min_silence_ms: int = Field(
        270,
        ge=0,
        le=2000,
        description="semantic_vad: the shortest pause a 'finished' from the end-of-turn "
        "model ends the turn at (eagerness medium and auto; low waits twice as long, high "
        "not at all): a speaker's comma passes, a complete turn still ends well within "
        "OpenAI's timeouts.",
    )
    turn_text_model: str | None = Field(
        None,
        description="semantic_vad's check of the words at a pause (local backend): a chat "
        "GGUF scoring how likely the transcript so far ends a message (default: the bundled "
        "SmolLM2-135M; 'none': the audio model decides alone).",
    )
    turn_text_threshold: float = Field(
        -14.0,
        le=0.0,
        description="Natural log of the end-of-message probability above which the words "
        "let a turn end.",
    )
    turn_transcribe: bool | None = Field(
        None,
        description="semantic_vad where the backend has no transcript of its own (the mock, "
        "the proxy's --local-turn-detection): transcribe the speech so far at each pause "
        "(--stt-model, default the bundled tiny.en) so that the words are judged too, as "
        "the local backend does with its own transcript; about 60 ms more CPU a pause. "
        "Default: on, its models built at the first semantic_vad pause (the audio decides "
        "until they are); --turn-transcribe builds them at start, --no-turn-transcribe: "
        "the audio model alone.",
    )
    workers: int = Field(4, description="Worker threads for model calls.")

    # Mock backend
    mock_script: str | None = Field(None, description="Mock reply script (YAML or JSON).")
    mock_first_delta_ms: int = Field(150, description="Mock: delay before the first output.")
    mock_words_per_minute: int = Field(170, description="Mock: speaking rate of output audio.")
    mock_realtime: bool = Field(True, description="Mock: pace output audio in real time.")
    mock_fault_error_after: int | None = Field(
        None, description="Mock fault: send a server_error event after N events."
    )
    mock_fault_close_after: int | None = Field(
        None, description="Mock fault: close the connection (1011) after N events."
    )
    mock_fault_stall_after: int | None = Field(
        None, description="Mock fault: stop sending (stall) after N events."
    )

    @property
    def pause_stt(self) -> Literal["start", "first use"] | None:
        """When this transceiver's own STT for semantic_vad's words at pauses is built:
        where turns are judged here and the backend has no transcript at a pause (the
        mock, the proxy's local turns, the local backend without speculative STT), at
        start with --turn-transcribe, at the first pause by default; never with
        --no-turn-transcribe or --turn-text-model none."""
        if self.turn_transcribe is False or self.words_turned_off or not self.judges_turns:
            return None  # not wanted, or OpenAI judges the turns
        proxied_turns = self.backend == "openai" and self.local_turn_detection
        if self.local_pipeline and self.speculative_stt and not proxied_turns:
            return None  # the local pipeline's own transcripts (the backend's or the fallback's)
        return "start" if self.turn_transcribe else "first use"

    @property
    def judges_turns(self) -> bool:
        """Whether this transceiver detects turns itself: the mock and the local backend,
        and a proxy with --local-turn-detection or a --fallback (else OpenAI does)."""
        return self.backend != "openai" or self.local_turn_detection or self.fallback != "none"

    @property
    def words_turned_off(self) -> bool:
        """--turn-text-model none: semantic_vad judges the audio alone."""
        return (self.turn_text_model or "").lower() == "none"

    @property
    def local_pipeline(self) -> bool:
        """Whether this transceiver runs the local pipeline: the local backend, or a
        proxy's ``--fallback local``."""
        return self.backend == "local" or (self.backend == "openai" and self.fallback == "local")

    def stt_options(self) -> dict[str, Any]:
        """The ``--stt-*`` options, as models/stt.py ``WhisperStt`` takes them."""
        return {
            "device": self.stt_device,
            "compute_type": self.stt_compute_type,
            "language": self.stt_language,
            "cpu_threads": self.stt_threads,
            "short_window": self.stt_short_window,
        }

    @model_validator(mode="after")
    def _vad_where_speech_is_detected_here(self) -> Self:
        if (
            self.backend == "openai"
            and self.vad == "silero"
            and not self.local_turn_detection
            and self.fallback == "none"
        ):
            raise ValueError(
                "--vad silero on the openai backend is for its own speech detection: "
                "--local-turn-detection or a --fallback (otherwise OpenAI detects turns)"
            )
        return self

    @model_validator(mode="after")
    def _turn_transcribe_has_words_to_judge(self) -> Self:
        if not self.turn_transcribe:
            return self
        if self.words_turned_off:
            raise ValueError(
                "--turn-transcribe transcribes pauses for the words' model, and "
                "--turn-text-model none turns that off"
            )
        return self

    @model_validator(mode="after")
    def _turn_options_where_turns_are_detected(self) -> Self:
        """The end-of-turn options on a proxy that detects no turns itself would do nothing."""
        if self.judges_turns:
            return self
        given = [option_flag(name) for name in _TURN_OPTIONS if name in self.model_fields_set]
        given += ["--turn-transcribe"] if self.turn_transcribe else []
        if given:
            raise ValueError(
                f"{', '.join(given)}: the openai backend detects no turns itself without "
                "--local-turn-detection or a --fallback (OpenAI judges semantic_vad upstream)"
            )
        return self

    @model_validator(mode="after")
    def _local_default_sessions(self) -> Self:
        if self.backend == "local" and "max_sessions" not in self.model_fields_set:
            self.max_sessions = local_max_sessions()
        return self

    @field_validator("voices")
    @classmethod
    def _voice_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_voice(entry)
        return value

    @field_validator("link_socket")
    @classmethod
    def _absolute_socket(cls, value: str | None) -> str | None:
        """Absolute, since /load offers it to relays started in other directories."""
        return os.path.abspath(value) if value else None

    @field_validator("stt_models")
    @classmethod
    def _stt_model_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_stt_model(entry)
        return value

    @field_validator(
        "upstream_header", "allowed_models", "model_map", "voices", "stt_models", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


# semantic_vad's end-of-turn options (transceiver/turns.py): the audio model's and the words'
_WORDS_OPTIONS = ("turn_text_model", "turn_text_threshold")
_TURN_OPTIONS = ("turn_model", "turn_threshold", "turn_min_silence_ms", *_WORDS_OPTIONS)
# Which backend uses which options (the rest: all of them, or checked by a validator above).
_STT_OPTIONS = (
    "stt_model",
    "stt_device",
    "stt_compute_type",
    "stt_language",
    "stt_threads",
    "stt_short_window",
)
_LOCAL_OPTIONS = (
    "stt_models",
    "speculative_stt",
    "preemptive_reply",
    "llm_url",
    "llm_model",
    "llm_api_key",
    "llm_gguf",
    "llm_context_tokens",
    "llm_threads",
    "llm_max_tokens",
    "llm_temperature",
    "tts_voice",
    "tts_speaker",
    "voices",
    "tts_lead_ms",
    "workers",
)
_MOCK_OPTIONS = ("mock_script", "mock_first_delta_ms", "mock_words_per_minute", "mock_realtime")
# The faults wrap the sessions this transceiver runs itself (mock and local, not the proxy's).
_FAULT_OPTIONS = ("mock_fault_error_after", "mock_fault_close_after", "mock_fault_stall_after")
_OPENAI_OPTIONS = (
    "upstream_url",
    "upstream_api_key",
    "upstream_header",
    "allowed_models",
    "model_map",
    "instructions_prefix",
    "upstream_open_timeout_s",
    "fallback",
    "local_turn_detection",
    "mirror_max_items",
    "mirror_max_bytes",
)
# A proxy's fallback session gets the input buffer's bound only.
_CORE_OPTIONS = ("max_conversation_audio_s", "prompts")


def unused_options(settings: TransceiverSettings) -> list[str]:
    """The options given (flag or environment) that the chosen backend does not use, as
    command-line options: the transceiver says so at start rather than ignore them quietly
    (environment variables shared by every backend's container would make a refusal a
    nuisance)."""
    proxy = settings.backend == "openai"
    local = settings.local_pipeline
    mock = settings.backend == "mock" or (proxy and settings.fallback == "mock")
    own = settings.backend in ("mock", "local")  # sessions run by this transceiver's core
    words = local or settings.pause_stt is not None  # pauses transcribed and their words judged
    words_off = settings.words_turned_off and settings.judges_turns
    # --(no-)turn-transcribe decides whether pauses are transcribed here: not where the
    # local pipeline has its own transcripts, nor where turns are not judged here.
    transcribes = settings.model_copy(update={"turn_transcribe": None}).pause_stt is not None
    groups = (
        (_STT_OPTIONS, words),
        (_LOCAL_OPTIONS, local),
        (_MOCK_OPTIONS, mock),
        (_FAULT_OPTIONS, own),
        (_OPENAI_OPTIONS, proxy),
        (("max_input_audio_s",), local or mock),
        (_CORE_OPTIONS, own),
        (("turn_text_model",), words or words_off),  # "none" turns the words off here
        (("turn_text_threshold",), words),
        (("turn_transcribe",), transcribes),
        (("vad_model",), settings.vad == "silero"),
    )
    given = settings.model_fields_set
    return [
        option_flag(name) for names, used in groups if not used for name in names if name in given
    ]


def is_switch(annotation: Any) -> bool:
    """Whether a setting of this type is a ``--name`` / ``--no-name`` switch on the command
    line (``bool``, or ``bool | None`` where not giving it has a meaning of its own)."""
    return annotation is bool or annotation == bool | None


def option_flag(name: str) -> str:
    """A setting's command-line option: ``turn_text_model`` -> ``--turn-text-model``."""
    return "--" + name.replace("_", "-")


def settings_error(exc: ValidationError) -> str:
    """A settings ``ValidationError`` as one line per bad option, for the command line:
    ``--sip-listen: 'nonsense' is not HOST:PORT``."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        option = option_flag(where) if where else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{option}: {message}")
    return "; ".join(lines)
