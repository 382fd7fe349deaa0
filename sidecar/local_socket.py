"""The sidecar's Unix socket: who may connect, and never taking another sidecar's place.

Any process that can connect to the socket can produce to and read every topic the mapping routes, so the socket is
created with `socket_mode` (0600 by default: the sidecar's own user), in a folder that only its owner (or root) can
change. A socket file that is already there is removed only when nothing answers on it: a second sidecar started by
mistake on the same path fails instead of cutting the first one's apps off.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator

from sidecar.errors import UsageError

#: How long a connection attempt to an existing socket file may take before it is judged live anyway.
PROBE_TIMEOUT_S = 1.0


def parse_mode(raw: object) -> int:
    """An octal permission string ("600", "0660") for the socket; owner read and write are required, nothing for
    others beyond the group (a socket every user could reach would let any of them produce as this sidecar)."""
    text = str(raw).strip()
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"socket-mode must be octal permissions such as 600 or 660, got {text!r}") from None
    if mode & ~0o777 or mode & 0o600 != 0o600:
        raise UsageError(f"socket-mode {text!r}: must be within 777 and give the owner read and write (600)")
    if mode & 0o007:
        raise UsageError(f"socket-mode {text!r}: gives every user of the host access; use 600, or 660 with a group "
                         f"folder (README, 'Local security')")
    return mode


def _answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(PROBE_TIMEOUT_S)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True         # a listener too busy to accept within a second is still a listener
        except OSError as e:
            if e.errno == errno.EACCES:
                return True     # someone else's socket that we may not use: certainly not ours to remove
            raise
        return True


def prepare(path: str, mode: int) -> None:
    """Make the socket's folder ready (created 0700, or 0750 for a group mode) and refuse one that another user
    could change; remove a stale socket file left by an earlier run, and refuse a live one or a file that is not a
    socket."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, 0o750 if mode & 0o070 else 0o700)     # exactly, whatever the umask
    st = os.stat(folder)
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UsageError(f"cannot listen on unix:{path}: its folder {folder} belongs to uid {st.st_uid}, not to this "
                         f"user (uid {me}) or root, who could replace the socket; use a folder of your own")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UsageError(f"cannot listen on unix:{path}: every user may write to its folder {folder} (mode "
                         f"{stat.S_IMODE(st.st_mode):o}) and so replace the socket; use a folder of your own")
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(existing.st_mode):
        raise UsageError(f"cannot listen on unix:{path}: a file that is not a socket is there; not removing it")
    if _answers(path):
        raise UsageError(f"cannot listen on unix:{path}: another process serves on it (it accepted a connection); "
                         f"stop it first, or listen elsewhere")
    os.unlink(path)         # a stale socket of an earlier run


@contextlib.contextmanager
def created_with(mode: int) -> Iterator[None]:
    """While binding: a process umask under which a new socket gets no more than mode (umask is process-wide, so
    keep this short; the socket is chmod-ed to mode afterwards anyway, see secure())."""
    old = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(old)


def secure(path: str, mode: int) -> None:
    """After binding: the socket's mode exactly (a umask only removes bits, and a group mode may need them)."""
    os.chmod(path, mode)
