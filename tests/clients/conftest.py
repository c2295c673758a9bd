"""Stock Realtime clients against ``realtime-relay serve --backend mock`` over TLS.

The Node SDK and the Python beta client always dial ``wss://`` (they derive the WebSocket
URL from an https base URL), so these tests run the server with a certificate made at test
time by a throwaway CA.
Python clients trust the CA through ``SSL_CERT_FILE``, Node through
``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.tls import Tls, make_tls
from tests.e2e.conftest import MOCK_ARGS
from tests.servers import RunningServer, relay_server

NODE_DIR = Path(__file__).with_name("node")


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_server(tls: Tls) -> Iterator[RunningServer]:
    args = ("--ssl-certfile", str(tls.cert_file), "--ssl-keyfile", str(tls.key_file))
    with relay_server(*MOCK_ARGS, *args) as server:
        assert server.base_url.startswith("https://127.0.0.1:"), server.base_url
        yield server


@pytest.fixture
def trust_ca(tls: Tls, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Python clients verify the server with the test CA (OpenSSL reads the variable)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return tls.ca_file


def _stale(node_modules: Path) -> bool:
    marker = node_modules / ".package-lock.json"  # written by npm on every install
    if not marker.exists():
        return True
    installed = marker.stat().st_mtime
    return any(
        (NODE_DIR / name).stat().st_mtime > installed
        for name in ("package.json", "package-lock.json")
    )


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """tests/clients/node with its pinned packages, installed by ``make test-deps``."""
    if shutil.which("node") is None:
        pytest.skip("node is needed for the Node client tests (not on PATH)")
    if _stale(NODE_DIR / "node_modules"):
        pytest.skip("the Node clients' packages are not installed: run `make test-deps`")
    return NODE_DIR
