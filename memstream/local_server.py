"""How a CLI command finds a `memstream serve` of its own data directory and proves it is
the data directory's owner (issue 16, section 7).

A server that already has everything open answers `get-all`, `search` and `add` in a few
milliseconds, where a new process needs most of a second to open the ledger. So `serve`
listens, besides its TCP port, on a Unix socket inside the data directory and leaves a
discovery file next to it; the CLI (memstream/cli/forward.py) asks it there.

Layout, under `<data_dir>/serve/` (mode 0700, owned by the server's user):

    cli-<pid>.sock    the server's Unix socket (mode 0600)
    server.json       {"pid", "socket", "token", "fingerprint"} (mode 0600), written once
                      the server is ready, removed when it stops

Why this is safe:
- Only the data directory's owner (or root) can reach the socket: it lives in a 0700
  directory and is itself 0600; the token is a fresh random secret per server run, kept only
  in the 0600 file and sent only over that socket, never over TCP; the server takes the
  local credential only from a request that came through its Unix socket (server side:
  memstream/server/local_cli.py). Whoever can read the file can read the whole data
  directory (the log and the subject keys) anyway: the token grants nothing more.
- The CLI trusts the directory, the file and the socket only when they are owned by its own
  user and not open to group or others, and a server whose process is gone is not asked
  (its leftovers are removed). A server with other settings (another log, topic, embedder,
  limits: `fingerprint`) is not asked either: the command then answers by itself, exactly as
  without a server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.settings import Settings

SERVE_DIR = "serve"
DISCOVERY = "server.json"
AUTH_SCHEME = "Local"  # Authorization: Local <token>
PATH = "/v1/local/cli/"
MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux, 104 on macOS


def fingerprint(settings: Settings) -> str:
    """What must be equal for a server to answer exactly as the command would by itself."""
    basis = {
        "data_dir": str(Path(settings.data_dir).resolve()),
        "kafka": settings.kafka_bootstrap,
        "topic": settings.topic,
        "partitions": settings.partitions,
        "embedder": settings.embedder,
        "limits": dataclasses.asdict(settings.limits),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LocalServer:
    """A running server's entry in the discovery file."""

    pid: int
    socket: Path
    token: str
    fingerprint: str


def _private(path: Path, kind: int) -> bool:
    """Whether `path` is of `kind` (not a symlink), owned by this user, closed to others."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_IFMT(st.st_mode) == kind
        and st.st_uid == os.getuid()
        and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )


def _alive(pid: int) -> bool | None:
    """True: running; False: gone; None: someone else's process has that pid now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return None
    return True


def discover(settings: Settings) -> LocalServer | None:
    """The server of this data directory with these settings, if one is running and every
    file involved is private to this user; None otherwise (the caller answers by itself).
    A discovery file left by a server that is gone is removed."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(settings.data_dir) / SERVE_DIR
    entry_path = folder / DISCOVERY
    if not _private(folder, stat.S_IFDIR) or not _private(entry_path, stat.S_IFREG):
        return None
    try:
        raw = entry_path.read_text()
        data = json.loads(raw)
        entry = LocalServer(
            pid=int(data["pid"]),
            socket=folder / Path(str(data["socket"])).name,  # never outside the folder
            token=str(data["token"]),
            fingerprint=str(data["fingerprint"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = _alive(entry.pid)
    if alive is False:
        _remove_if_unchanged(entry_path, raw)
        with contextlib.suppress(OSError):
            entry.socket.unlink()
        return None
    if not alive or entry.fingerprint != fingerprint(settings):
        return None
    if not _private(entry.socket, stat.S_IFSOCK):
        return None
    return entry


def _remove_if_unchanged(path: Path, content: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text() == content:
            path.unlink()


# -- the server's side -----------------------------------------------------------------
def prepare_folder(data_dir: Path) -> Path | None:
    """`<data_dir>/serve`, created 0700; None if it is not private to this user (then the
    server offers no local socket) or the socket path would be too long."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(data_dir) / SERVE_DIR
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not _private(folder, stat.S_IFDIR):
        return None
    if len(os.fsencode(str(socket_path(folder, os.getpid())))) > MAX_SOCKET_PATH:
        return None
    for left in folder.glob("cli-*.sock"):  # sockets of servers that are gone
        with contextlib.suppress(ValueError, OSError):
            if _alive(int(left.stem.removeprefix("cli-"))) is False:
                left.unlink()
    return folder


def socket_path(folder: Path, pid: int) -> Path:
    return folder / f"cli-{pid}.sock"


def publish(folder: Path, entry: LocalServer) -> None:
    """Write the discovery file (0600 from its creation, replaced atomically)."""
    body: dict[str, Any] = {"pid": entry.pid, "socket": entry.socket.name, "token": entry.token,
                            "fingerprint": entry.fingerprint}  # fmt: skip
    tmp = folder / f".{DISCOVERY}.{entry.pid}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.replace(tmp, folder / DISCOVERY)


def withdraw(folder: Path, entry: LocalServer) -> None:
    """Remove this server's socket, and the discovery file if it is still this server's (a
    second server of the same data directory may have replaced it)."""
    path = folder / DISCOVERY
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        raw = path.read_text()
        if json.loads(raw)["token"] == entry.token:
            _remove_if_unchanged(path, raw)
    with contextlib.suppress(OSError):
        entry.socket.unlink()
