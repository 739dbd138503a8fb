"""Run folders: one training run per folder, guarded by a lock, with files replaced atomically.

* `lock(folder)` takes the folder's lock file (`run.lock`, holding pid, host and start time) with `flock`, so a
  second run on the same folder is refused with a message naming the holder. The kernel drops the lock of a
  process that dies (kill -9 included): a lock file left by a killed run is stale and is taken over, whatever
  pid it names (pids are reused). Under torchrun only the writing rank (rank 0) takes it.
* `holds_run(folder)` / `move_aside(folder)`: a new run refuses a folder that holds another run's files unless
  told to move them into `previous-<n>/` (nothing is deleted).
* `write_atomically(path, text)`: temporary file, fsync, rename, so a reader or a kill never sees half a file;
  `remove_temporaries(folder)` deletes the `.tmp-*` files of writes that were killed.

`UsageError` is the one type of expected failure (a bad flag, path or checkpoint, a busy folder): the command
line shows it as a one-line error; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import shutil
import socket
import tempfile

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

log = logging.getLogger("ntm_fast.tools.train")

LOCK_NAME = "run.lock"
TEMPORARY_PREFIX = ".tmp-"
# What `ntm-fast train` writes into its folder; `level-N.pt` are the curriculum's checkpoints.
RUN_FILES = ("checkpoint.pt", "checkpoint-prev.pt", "best.pt", "metrics.csv", "eval.json", "learning_curve.png", "weightings.png",
             "generalization.png")
RUN_PATTERNS = ("level-*.pt",)


class UsageError(ValueError):
    """An expected failure caused by what the user asked for: shown as one line, without a traceback.

    `field` names the setting at fault (a TrainConfig field such as 'steps', a model option such as
    'memory_slots'), for the command line to name the matching flag; a message about it starts with it quoted
    ("'steps' must be ..."), which the command line replaces by the flag ("--steps must be ...")."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def run_files(folder: str) -> list:
    """Paths of the run files in `folder` (sorted)."""
    found = [os.path.join(folder, name) for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]
    for pattern in RUN_PATTERNS:
        found += glob.glob(os.path.join(glob.escape(folder), pattern))
    return sorted(found)


def holds_run(folder: str) -> bool:
    return bool(run_files(folder))


def move_aside(folder: str) -> str:
    """Move the run files of `folder` into a new `folder/previous-<n>` (n = 1, 2, ...); returns that path."""
    n = 1
    while os.path.lexists(os.path.join(folder, f"previous-{n}")):
        n += 1
    target = os.path.join(folder, f"previous-{n}")
    os.mkdir(target)
    for path in run_files(folder):
        os.replace(path, os.path.join(target, os.path.basename(path)))
    return target


def write_atomically(path: str, content, suffix: str = ""):
    """Write `path` through a temporary file in the same folder: fsync, then rename over `path`. `content` is
    the text to write, or a function that writes into the binary file it is given."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    text = isinstance(content, str)
    try:
        _chmod_like_open(tmp)
        with os.fdopen(fd, "w", newline="") if text else os.fdopen(fd, "wb") as f:
            if text:
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def link_atomically(source: str, target: str):
    """Give `source`'s file the second name `target` (a hard link, made under a temporary name and renamed
    over `target`); where the file system has no hard links, a copy."""
    folder = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{os.path.basename(target)}.{os.getpid()}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _chmod_like_open(path):
    """mkstemp makes files 0600; give `path` the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def remove_temporaries(folder: str) -> list:
    """Delete the `.tmp-*` files that killed writes left in `folder`; returns their names. Call it holding
    the folder's lock, when no write of this run is under way."""
    names = [n for n in os.listdir(folder) if n.startswith(TEMPORARY_PREFIX)
             and os.path.isfile(os.path.join(folder, n))]
    for name in names:
        os.remove(os.path.join(folder, name))
    return names


class RunLock:
    """The held lock of a run folder; `release()` (or leaving a `with` block) gives it up."""

    def __init__(self, fd, path):
        self.fd, self.path = fd, path

    def release(self):
        if self.fd is None:
            return
        # Remove the file while holding the lock: a run waiting on this inode then sees that it was removed
        # and locks a fresh file (see `lock`).
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(fd) -> dict:
    """The pid/host/started entries a lock file holds ({} when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        text = os.read(fd, 4096).decode()
        holder = json.loads(text) if text.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "a run that is starting up"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def lock(folder: str) -> RunLock:
    """Take `folder`'s run lock, or raise UsageError(field 'out_dir') naming the run that holds it."""
    path = os.path.join(folder, LOCK_NAME)
    if fcntl is None:
        log.warning("%s: no file locking on this platform; nothing keeps a second run out of this folder", folder)
        return RunLock(None, path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another run (BlockingIOError)
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(f"'out_dir' {folder!r} is in use by another run: {describe_holder(holder)} (lock file "
                             f"{path}); wait for it to end or choose another folder", field="out_dir") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder removed the file as it finished, after we opened it: lock the new file
    stale = _holder(fd)
    if stale:
        log.warning("%s: taking over the lock of a run that is gone (%s)", folder, describe_holder(stale))
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    return RunLock(fd, path)
