"""The load generator behind ``realtime-relay load`` (and bench/locustfile.py): client code,
kept out of relay/ so that it may use models/ (synthetic speech, resampling).

``loadgen.client`` holds the WebSocket client, the run and its summary;
``loadgen.webrtc`` the same client as a WebRTC caller (imported only for
``--transport webrtc``).
"""

from loadgen.client import (
    MAX_SESSIONS,
    RESPONSE_TIMEOUT_S,
    Figures,
    LoadOptions,
    SimulatedClient,
    default_speech,
    format_summary,
    progress_line,
    read_wav,
    run_load,
    summarize,
)

__all__ = [
    "MAX_SESSIONS",
    "RESPONSE_TIMEOUT_S",
    "Figures",
    "LoadOptions",
    "SimulatedClient",
    "default_speech",
    "format_summary",
    "progress_line",
    "read_wav",
    "run_load",
    "summarize",
]
