"""The transceiver's Unix socket (``--link-socket PATH``): the same endpoints as its TCP
port, for a relay on the same machine. A Unix stream socket skips the TCP stack on both
ends: two processes on two cores passing 1.3 KB back and forth spend about a third less
CPU a round trip than over TCP on loopback (README, "Relay <-> transceiver link").

The link secret is checked there as on the port; the socket file is made readable and
writable by its owner only before it listens, and ``serve`` puts its transceivers' sockets
in a directory of its own (mode 0700).
"""

from __future__ import annotations

import contextlib
import errno
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
        probe.settimeout(1.0)  # a listener with a full backlog: in use
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: left by a process that ended
            return path
        except OSError as exc:  # not ours to use (EACCES: another user's), or busy
            reason = errno.errorcode.get(exc.errno or 0, str(exc))
            raise SocketPathError(f"--link-socket {path} cannot be taken over ({reason})") from None
    raise SocketPathError(f"--link-socket {path} is in use by another process")


def bind(path: str) -> tuple[socket.socket, os.stat_result]:
    """A listening socket at ``path`` (claimed first), mode 0600 before it
    listens, so no one else ever connects; and the file's identity, for :func:`release`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(claim(path))
        bound = secure(path)
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener, bound


def secure(path: str) -> os.stat_result:
    """Only the owner may connect (the link secret is still asked for); the file's identity,
    for :func:`release`."""
    os.chmod(path, 0o600)
    return os.stat(path)


def release(path: str, bound: os.stat_result | None) -> None:
    """Remove the socket file this process bound (``bound``, from :func:`secure`), not one
    that a successor bound at the same path since."""
    with contextlib.suppress(OSError):
        now = os.lstat(path)
        if bound is not None and _identity(now) == _identity(bound):
            os.unlink(path)


def _identity(found: os.stat_result) -> tuple[int, int, int]:
    # The inode number of a removed file may be reused at once: its change time too.
    return found.st_dev, found.st_ino, found.st_ctime_ns
