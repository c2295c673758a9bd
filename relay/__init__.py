"""The thin, stateless edge: auth, WebSocket (and WebRTC) clients, placement on transceivers."""
