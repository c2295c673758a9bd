"""The transceiver's Unix socket (``--link-socket PATH``): the same endpoints as its TCP
port, for a relay on the same machine. A Unix stream socket skips the TCP stack on both
ends: two processes on two cores passing 1.3 KB back and forth spend about a third less
CPU a round trip than over TCP on loopback (README, "Relay <-> transceiver link").

The link secret is checked there as on the port; the socket file is made readable and
writable by its owner only, and ``serve`` puts its transceivers' sockets in a directory of
its own (mode 0700).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat


class SocketPathError(Exception):
    """The path cannot be used: it is something else, or a live socket."""


def claim(path: str) -> str:
    """``path``, ready to bind: a socket file left by a transceiver that is gone is
    removed; anything else there, or a socket something still listens on, is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(f"--link-socket {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by a process that ended
            return path
    raise SocketPathError(f"--link-socket {path} is in use by another process")


def secure(path: str) -> None:
    """Only the owner may connect (the link secret is still asked for)."""
    os.chmod(path, 0o600)


def release(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
