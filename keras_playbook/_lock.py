"""Who writes a Playbook's folder: one process at a time, and in it the latest Playbook.

Two Playbooks writing one folder lose each other's records: each rewrites the
journal from its own memory, so the last writer wins. A folder is held by a
process through `<directory>/.lock`, a JSON file
`{"pid", "host", "token", "started", "heartbeat"}` created atomically (written
aside, then linked in place: it fails when the file exists):

- a Playbook in another live process on the same folder is refused, naming
  that process (`ValueError`);
- in the same process (a notebook running its constructor cell again) the new
  Playbook takes the folder over; the earlier one refuses further stages
  (`RuntimeError`), since its journal in memory no longer says what is on disk;
- a worker of a distributed KerasTuner search (`KERASTUNER_ORACLE_IP` set, `KERASTUNER_TUNER_ID` other
  than the chief) takes no lock and never writes the journal: it reads the
  chief's;
- a stale lock is taken over: on the same host, when its process has ended;
  from another host (a shared file system), when its heartbeat is older than
  `STALE_AFTER` seconds. A process holding a lock refreshes its heartbeat
  every `HEARTBEAT_EVERY` seconds (a daemon thread, and at each stage call).

The lock is removed when the process exits, and when the Playbook holding it
is garbage collected; neither is needed for correctness.

Example:

```python
lease = Lease("runs/exp1")  # Refuses a folder another live process holds.
...  # Check the arguments, read the journal.
lease.take(playbook)  # From here `playbook` holds the folder.
lease.check("fit")  # Before each stage: refuses once another Playbook took over.
```
"""

import atexit
import errno
import json
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref

LOCK_FILENAME = ".lock"
# A lock from another host whose heartbeat is older than this (seconds) is stale.
STALE_AFTER = 300.0
# How often a process refreshes the heartbeat of the locks it holds (seconds).
HEARTBEAT_EVERY = 60.0
# A takeover's guard file older than this (seconds) was left by a crash in the middle of a takeover.
_GUARD_STALE_AFTER = 30.0

_HOST = socket.gethostname()
_HELD = {}  # Real path of a folder -> the `FolderLock` this process holds on it.
_OWNERS = {}  # Real path of a folder -> the `Lease` of the Playbook that writes it in this process.
_REGISTRY = threading.RLock()
_STOP = threading.Event()
_heartbeat = None  # The thread refreshing the heartbeats, started with the first lock.


def tuning_worker():
    """True in a worker of a distributed KerasTuner search, as KerasTuner tells it (`dist_utils`).

    A distributed search sets `KERASTUNER_ORACLE_IP` in every process; the
    chief's `KERASTUNER_TUNER_ID` contains "chief", each worker's another id.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return False
    return "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")


def _when(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _ago(seconds):
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _alive(pid):
    """True when process `pid` of this host runs, False when it has ended, None when it cannot be told."""
    if os.name == "nt":  # os.kill(pid, 0) would end the process there.
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process.
        return True
    except (OSError, OverflowError, ValueError):
        return None
    try:  # Linux: a process that has ended but was not waited for yet (a zombie) still answers.
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _read(path):
    """`(info, unreadable)`: the lock's JSON (None when there is no lock), and whether a file there is unreadable."""
    try:
        with open(path) as file:
            info = json.load(file)
    except FileNotFoundError:
        return None, False
    except (OSError, ValueError):
        return None, True
    if not isinstance(info, dict):
        return None, True
    return info, False


def _journal_state(real):
    """What changes when the journal in `real` is written (None when there is none)."""
    try:
        stat = os.stat(os.path.join(real, "journal.json"))
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _stale_reason(info, path):
    """Why the lock `info` (read from `path`) is stale, or None while its process may still write the folder."""
    pid, host = info.get("pid"), info.get("host")
    if host == _HOST and isinstance(pid, int) and not isinstance(pid, bool):
        if pid == os.getpid():
            return "it names this process, which holds no Playbook on the folder (left by an earlier process)"
        alive = _alive(pid)
        if alive is False:
            return f"process {pid} on this host has ended"
        if alive:
            return None
    heartbeat = info.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or isinstance(heartbeat, bool):
        try:
            heartbeat = os.path.getmtime(path)
        except OSError:
            return "it was removed"
    age = time.time() - heartbeat
    if age > STALE_AFTER:
        return f"its heartbeat is {_ago(age)} old (a live process refreshes it every {HEARTBEAT_EVERY:.0f} s)"
    return None


def _is_stale(info, unreadable, path):
    """Whether a lock read from `path` may be taken over (an unreadable one: when not written for `STALE_AFTER`)."""
    if not unreadable:
        return _stale_reason(info, path) is not None
    try:
        return time.time() - os.path.getmtime(path) > STALE_AFTER
    except OSError:
        return True  # Removed since.


def _holder(info):
    """The process a lock names, for a message."""
    started = info.get("started")
    since = f", since {_when(started)}" if isinstance(started, (int, float)) else ""
    return f"process {info.get('pid')!r} on host {info.get('host')!r}{since}"


def _refusal(directory, path, info, unreadable):
    """The message refusing a folder another process holds: who holds it and what to do."""
    if unreadable:
        return (
            f"Argument `directory` is locked: {path} exists and cannot be read, so whether another process writes "
            f"that folder cannot be told. Received: directory={directory!r}. Pass another `directory`, or delete "
            f"{path} if no other process uses the folder (it is judged stale {_ago(STALE_AFTER)} after it was last "
            "written)."
        )
    heartbeat = info.get("heartbeat")
    refreshed = (
        f"; its heartbeat is {_ago(time.time() - heartbeat)} old"
        if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool)
        else ""
    )
    if info.get("host") == _HOST:
        unless = (
            f"If process {info.get('pid')!r} is not a Python process using this folder (its id was reused), "
            f"delete {path}."
        )
    else:
        unless = (
            f"A lock from another host is stale {_ago(STALE_AFTER)} after its last heartbeat; if that process "
            f"has ended, delete {path} to take the folder over sooner."
        )
    return (
        f"Argument `directory` is in use by another process: {_holder(info)} holds {directory!r} (lock file "
        f"{path}{refreshed}). Two processes writing one folder lose each other's records in its journal. "
        f"Wait for that process to end (or end it), or pass another `directory`. {unless}"
    )


class FolderLock:
    """This process's lock on one folder: the file `<real>/.lock` naming it.

    Args:
        real: The folder's real path (absolute, symbolic links resolved), so
            that a later change of working directory changes nothing.
        directory: The folder as the user named it, for messages.
    """

    def __init__(self, real, directory):
        self.real = real
        self.directory = directory
        self.path = os.path.join(real, LOCK_FILENAME)
        self.pid = os.getpid()
        self.host = _HOST
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.refreshed = self.started

    def _info(self):
        return {
            "pid": self.pid,
            "host": self.host,
            "token": self.token,
            "started": self.started,
            "heartbeat": time.time(),
        }

    def _written_aside(self):
        """A temporary file beside the lock holding this lock's JSON; returns its path."""
        handle, temporary = tempfile.mkstemp(dir=self.real, prefix=LOCK_FILENAME + ".", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(self._info(), file)
        except BaseException:
            os.remove(temporary)
            raise
        return temporary

    def create(self):
        """Creates the lock file if there is none; returns whether this process now holds it."""
        os.makedirs(self.real, exist_ok=True)
        temporary = self._written_aside()
        try:
            try:
                os.link(temporary, self.path)  # Atomic, and refused when the lock exists: the file is whole.
                return True
            except FileExistsError:
                return False
            except OSError:  # A file system without hard links: create exclusively, then write.
                pass
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(handle, "w") as file:
                json.dump(self._info(), file)
            return True
        finally:
            os.remove(temporary)

    def _guarded(self, action):
        """Runs `action()` while holding the takeover guard `<real>/.lock.takeover`; None when another holds it."""
        guard = self.path + ".takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(guard) > _GUARD_STALE_AFTER:
                    os.remove(guard)  # Left by a process that died in the middle of a takeover.
            except OSError:
                pass
            return None
        try:
            return action()
        finally:
            try:
                os.remove(guard)
            except OSError:
                pass

    def replace(self, stale_token):
        """Replaces a stale lock still carrying `stale_token` by this one; returns whether it did.

        Returns None when another process was taking the folder over at the
        same moment (try again).
        """

        def swap():
            info, _ = _read(self.path)
            if (info or {}).get("token") != stale_token:
                return False  # Replaced or removed since it was judged.
            temporary = self._written_aside()
            os.replace(temporary, self.path)
            return True

        os.makedirs(self.real, exist_ok=True)
        return self._guarded(swap)

    def holds(self):
        """Whether the lock file still names this lock."""
        info, _ = _read(self.path)
        return (info or {}).get("token") == self.token

    def refresh(self):
        """Writes a new heartbeat if this lock is still the one on disk (never creates one)."""

        def beat():
            if self.holds():
                os.replace(self._written_aside(), self.path)
                self.refreshed = time.time()

        if os.getpid() == self.pid and os.path.isdir(self.real):
            self._guarded(beat)

    def release(self):
        """Removes the lock file when it is still this lock."""
        if os.getpid() != self.pid:
            return
        self._guarded(lambda: os.remove(self.path) if self.holds() else None)


def acquire(real, directory, attempts=20):
    """Takes the folder `real` for this process: a new lock, or one taking a stale lock over.

    Args:
        real: The folder's real path.
        directory: The folder as the user named it, for messages.
        attempts: How many times to try while other processes take and
            release the folder at the same moment.

    Returns:
        The `FolderLock`, registered as held by this process.

    Raises:
        ValueError: when another live process holds the folder, naming it
            and what to do.
    """
    lock = FolderLock(real, directory)
    for _ in range(attempts):
        if lock.create():
            break
        info, unreadable = _read(lock.path)
        if info is None and not unreadable:
            continue  # Released between the two: try again.
        if not _is_stale(info, unreadable, lock.path):
            raise ValueError(_refusal(directory, lock.path, info or {}, unreadable))
        if lock.replace((info or {}).get("token")):
            break
        time.sleep(0.05)
    else:
        raise ValueError(
            f"Argument `directory` could not be locked: other processes kept taking {lock.path} while this one "
            f"tried. Received: directory={directory!r}. Try again, or pass another `directory`."
        )
    with _REGISTRY:
        _HELD[real] = lock
        _start_heartbeat()
    return lock


def _start_heartbeat():
    global _heartbeat
    if _heartbeat is None or not _heartbeat.is_alive():
        _heartbeat = threading.Thread(target=_beat, name="keras_playbook lock heartbeat", daemon=True)
        _heartbeat.start()


def _beat():
    while not _STOP.wait(HEARTBEAT_EVERY):
        with _REGISTRY:
            locks = list(_HELD.values())
        for lock in locks:
            try:
                lock.refresh()
            except OSError:
                pass


class Lease:
    """A Playbook's right to write its folder (the journal, weights, backups).

    Made at the start of the Playbook's constructor, it refuses at once a
    folder another live process holds; `take` then takes the folder, right
    before the Playbook first writes there; `check` starts every stage.

    Args:
        directory: The Playbook's folder, or None (a journal in memory: no
            lock, and `check` never refuses).

    Raises:
        ValueError: when another live process holds `directory`, naming it
            and what to do (wait for it, or another directory).

    Example:

    ```python
    lease = Lease("runs/exp1")
    lease.take(playbook)
    lease.check("fit")
    ```
    """

    def __init__(self, directory):
        self.directory = None if directory is None else os.fspath(directory)
        self.real = None if directory is None else os.path.realpath(self.directory)
        # A KerasTuner worker reads the chief's journal and never writes it.
        self.worker = directory is not None and tuning_worker()
        self.lock = None
        self.taken_over = None  # When another Playbook of this process took the folder over.
        self._unheld = False  # The folder was not this process's when the lease was made.
        self._journal_seen = None  # Its journal's state then (see `take`).
        if self.real is None or self.worker:
            return
        with _REGISTRY:
            held = _HELD.get(self.real)
        if held is None or not held.holds():
            path = os.path.join(self.real, LOCK_FILENAME)
            info, unreadable = _read(path)
            if (info is not None or unreadable) and not _is_stale(info, unreadable, path):
                raise ValueError(_refusal(self.directory, path, info or {}, unreadable))
            self._unheld, self._journal_seen = True, _journal_state(self.real)

    @property
    def writes(self):
        """Whether the Playbook writes its folder: it has one and is not a KerasTuner worker."""
        return self.real is not None and not self.worker

    def take(self, owner):
        """Takes the folder for `owner` (the Playbook): from here it alone writes there in this process.

        An earlier Playbook of this process on the same folder gives it up:
        its `check` refuses from now on. A no-op without a folder, and for a
        KerasTuner worker.

        Args:
            owner: The Playbook; when it is garbage collected while holding
                the folder, the lock file is removed.

        Raises:
            ValueError: when another live process took the folder since this
                lease was made, or wrote its journal meanwhile (make the
                Playbook again: what it read is out of date).
        """
        if not self.writes:
            return
        with _REGISTRY:
            held = _HELD.get(self.real)
            if held is None or not held.holds():
                # A folder this process cannot write is only read (its journal): no lock, and a stage's
                # first write there fails as it would without one.
                try:
                    held = acquire(self.real, self.directory)
                except OSError as error:
                    if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    return
                now = _journal_state(self.real)  # None after `overwrite=True` removed the journal: not a change.
                if self._unheld and now is not None and now != self._journal_seen:
                    held.release()
                    _HELD.pop(self.real, None)
                    raise ValueError(
                        f"Argument `directory`: another process wrote {os.path.join(self.directory, 'journal.json')} "
                        f"while this Playbook was being made. Received: directory={self.directory!r}. Make the "
                        "Playbook again (it carries on the journal as it is now), or pass another `directory`."
                    )
            previous = _OWNERS.get(self.real)
            _OWNERS[self.real] = self
            self.lock = held
        if previous is not None and previous is not self:
            previous.taken_over = time.time()
        weakref.finalize(owner, _forget, self.real, self)

    def check(self, caller):
        """Refuses a stage (`caller`) of a Playbook that no longer holds its folder.

        Also refreshes the heartbeat, and takes the lock again when its file
        was deleted.

        Raises:
            RuntimeError: when another Playbook of this process took the
                folder over (use that one), when this process is not the one
                that made the Playbook (a forked child), or when another
                process took the folder over.
        """
        if self.lock is None:
            return
        if os.getpid() != self.lock.pid:
            raise RuntimeError(
                f"{caller}: this Playbook was made in process {self.lock.pid} and holds {self.directory!r} there; "
                f"this is process {os.getpid()} (a fork). Make a new Playbook in this process, or pass another "
                "`directory`."
            )
        if self.taken_over is not None or _OWNERS.get(self.real) is not self:
            since = f" at {_when(self.taken_over)}" if self.taken_over is not None else ""
            raise RuntimeError(
                f"{caller}: this Playbook no longer writes {self.directory!r}: another Playbook made in this process "
                f"on the same folder{since} (a cell run again?) took it over, and two Playbooks writing one journal "
                "lose each other's records. Use the newer Playbook (it carried on this one's journal), or make a "
                "new one."
            )
        with _REGISTRY:
            if self.lock.holds():
                if time.time() - self.lock.refreshed > HEARTBEAT_EVERY:
                    self.lock.refresh()
                return
            info, unreadable = _read(self.lock.path)
            if info is None and not unreadable:  # Deleted (by hand): taken again if still free.
                if self.lock.create():
                    _HELD[self.real] = self.lock
                    _start_heartbeat()
                    return
                info, unreadable = _read(self.lock.path)
        holder = "a file that cannot be read" if unreadable else _holder(info or {})
        raise RuntimeError(
            f"{caller}: this Playbook no longer holds {self.directory!r}: its lock {self.lock.path} now names "
            f"{holder} (this process's lock was judged stale, or the file was replaced). Two processes writing "
            "one folder lose each other's records, so this Playbook writes there no more. Make a new Playbook "
            "once that process is done, or pass another `directory`."
        )


def _forget(real, lease):
    """When a Playbook holding a folder is garbage collected: the folder is released."""
    with _REGISTRY:
        if _OWNERS.get(real) is not lease:
            return
        del _OWNERS[real]
        lock = _HELD.pop(real, None)
    if lock is not None:
        try:
            lock.release()
        except OSError:
            pass


@atexit.register
def _release_all():
    _STOP.set()
    with _REGISTRY:
        locks = list(_HELD.values())
        _HELD.clear()
        _OWNERS.clear()
    for lock in locks:
        try:
            lock.release()
        except OSError:
            pass


def _after_fork_in_child():
    """A forked child holds nothing: its parent does (and its Playbooks refuse stages there)."""
    global _REGISTRY, _heartbeat
    _REGISTRY = threading.RLock()
    _HELD.clear()
    _OWNERS.clear()
    _heartbeat = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
