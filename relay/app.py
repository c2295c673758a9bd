"""The relay's FastAPI app: the shared :class:`~relay.edge.Edge`, middleware and routes.

- :mod:`relay.rest`: health, metrics, models, minting ephemeral keys;
- :mod:`relay.realtime_ws`: ``WS /v1/realtime``, forwarded to a transceiver frame for frame,
  and sidebands to WebRTC calls (``?call_id=``);
- :mod:`relay.calls`: WebRTC calls and their hangup.
- :mod:`relay.twilio`: phone calls from Twilio Media Streams (TwiML webhook, media stream).
- :mod:`relay.sip.routes`: accept, reject and refer SIP calls (``app.state.sip``, the
  :class:`~relay.sip.endpoint.SipEndpoint` of ``--sip-listen``; started by the server).

Routes reach the edge through the ``EdgeDep`` dependency (``app.state.edge``), credentials
through :mod:`relay.auth`, and start sessions through :func:`relay.admission.admit`.
"""

from __future__ import annotations

from fastapi import FastAPI

from relay import calls, realtime_ws, rest, twilio
from relay.edge import Edge
from relay.errors import JsonCorsMiddleware, install_error_handlers
from relay.ice import use_host_addresses
from relay.settings import RelaySettings
from relay.sip import routes as sip_routes
from relay.sip.endpoint import SipEndpoint


def create_app(settings: RelaySettings) -> FastAPI:
    """The relay app for ``settings``. Its shared state is ``app.state.edge``; whoever
    serves the app starts and stops ``edge.pool`` (see :mod:`relay.cli`)."""
    app = FastAPI(title="realtime-relay", docs_url=None, redoc_url=None)
    app.add_middleware(
        JsonCorsMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Location"],
    )
    install_error_handlers(app)
    app.state.edge = Edge.create(settings)
    if settings.webrtc_host_addresses:
        use_host_addresses(settings.webrtc_host_addresses)
    app.state.sip = SipEndpoint(app.state.edge) if settings.sip_listen else None
    app.include_router(rest.router)
    app.include_router(realtime_ws.router)
    app.include_router(calls.router)
    app.include_router(sip_routes.router)
    app.include_router(twilio.router)
    return app
