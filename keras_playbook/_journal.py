"""Stage results and the journal that records them.

Every stage returns a `Result`: a dataclass holding the numbers first, then a
verdict `ok` and a `message` a person can act on. The `Journal` keeps results
in order and, when it has a path, rewrites its JSON file after each append so a
crashed run keeps what it had measured.
"""

import dataclasses
import json
import os
import tempfile
import uuid

import numpy as np

JOURNAL_FILENAME = "journal.json"
_FORMAT_VERSION = 1
_RESULT_TYPES = {}


def to_builtin(value):
    """Converts NumPy scalars/arrays (also nested) to JSON-ready builtins."""
    if isinstance(value, dict):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def stale_reason(result, name, current):
    """Why `result`'s value of `name` no longer holds under the settings `current`, or None."""
    for setting, measured in result.depends_on().items():
        if setting in current and current[setting] != measured:
            value = result.settles()[name]
            shown = f"{value:.3g}" if isinstance(value, float) else repr(value)
            return (
                f"{name}={shown} from {result.kind} was measured at {setting}={measured}, "
                f"but {setting} is now {current[setting]}"
            )
    return None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Result:
    """Base class of stage results (subclasses are dataclasses).

    A subclass declares its numbers as dataclass fields, then `ok: bool` and
    `message: str`, and sets the class attribute `kind` (the stage's name,
    used to rebuild the right class from JSON).

    Example:

    ```python
    @dataclasses.dataclass
    class MyResult(Result):
        kind = "my_stage"
        value: float
        ok: bool
        message: str
    ```
    """

    kind = "result"
    # How the stage was called, set by the stage runner: {"stage", "arguments",
    # "read" (the settled values it used), "depends_on", "seconds", "steps", "parent"}.
    call = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind in _RESULT_TYPES and _RESULT_TYPES[cls.kind] is not cls:
            raise ValueError(
                f"Result kind {cls.kind!r} is already used by "
                f"{_RESULT_TYPES[cls.kind].__name__}; give {cls.__name__} its "
                "own `kind`."
            )
        _RESULT_TYPES[cls.kind] = cls

    def to_dict(self):
        """Returns a JSON-ready dict, with the result's `kind` under "kind"."""
        fields = {field.name: to_builtin(getattr(self, field.name)) for field in dataclasses.fields(self)}
        data = {"kind": self.kind, **fields}
        if self.call is not None:
            data["call"] = to_builtin(self.call)
        return data

    @classmethod
    def from_dict(cls, data):
        """Rebuilds a result from `to_dict()` output.

        Called on `Result` it dispatches on `data["kind"]`; called on a
        subclass it checks the kind matches.
        """
        data = dict(data)
        kind = data.pop("kind", None)
        target = _RESULT_TYPES.get(kind)
        if target is None:
            raise ValueError(
                f"Unknown result kind {kind!r}. Known kinds: "
                f"{sorted(_RESULT_TYPES)}. Import the module that defines it "
                "before loading the journal."
            )
        if cls is not Result and not issubclass(target, cls):
            raise ValueError(f"Cannot load a {kind!r} result as {cls.__name__}.")
        call = data.pop("call", None)
        names = {field.name for field in dataclasses.fields(target)}
        result = target(**{key: value for key, value in data.items() if key in names})
        if call is not None:
            result.call = call
        return result

    def settles(self):
        """Returns the hyperparameters this result settles for `Playbook.fit`.

        Returns:
            A dict such as `{"learning_rate": 3e-3}`; empty by default.
        """
        return {}

    def depends_on(self):
        """Returns the settings this result's measurement holds for.

        The stage runner records them with the call: each stage declares the
        settings its settled values depend on, and the values in force when
        it ran are kept.

        Returns:
            A dict such as `{"batch_size": 32}`: a learning rate found at one
            batch size is stale once another batch size is settled. Empty for
            a result recorded without its call.
        """
        return dict((self.call or {}).get("depends_on", {}))

    def plot(self):
        """Returns a matplotlib Figure of this result.

        Raises:
            NotImplementedError: for results that have nothing to draw.
        """
        raise NotImplementedError(f"{type(self).__name__} has nothing to plot; read its fields or `message` instead.")

    def summary(self):
        """Returns one line: the stage, its verdict and its message."""
        verdict = "OK" if self.ok else "CHECK"
        return f"{self.kind}: {verdict} - {self.message}"


class Journal:
    """The ordered record of a Playbook's stage results.

    Args:
        path: Optional file path. When set, the journal is written there as
            JSON after every `append`, so what was measured survives a crash.

    Example:

    ```python
    journal = Journal.load("runs/exp1/journal.json")
    for result in journal:
        print(result.summary())
    ```
    """

    def __init__(self, path=None):
        self.path = None if path is None else os.fspath(path)
        self._results = []
        # Which run the files beside the journal belong to (backups are keyed by it): a new journal,
        # `overwrite=True` included, never resumes the backup of another.
        self.id = uuid.uuid4().hex[:12]

    def append(self, result):
        """Adds a result and writes the journal to disk if it has a path."""
        if not isinstance(result, Result):
            raise TypeError(
                f"Journal entries must be `Result` instances. Received: {result!r} (of type {type(result).__name__})."
            )
        self._results.append(result)
        if self.path is not None:
            self.save(self.path)
        return result

    def truncate(self, length):
        """Keeps the first `length` results (and rewrites the file when the journal has a path).

        A composite stage that fails leaves no partial record: what it had
        appended is taken back, so the journal says what the model is.
        """
        if len(self._results) > length:
            del self._results[length:]
            if self.path is not None:
                self.save(self.path)

    @property
    def start(self):
        """Index of the current set-up record: what comes before it is history of other set-ups.

        A Playbook carrying on a journal whose set-up differs from its own
        appends a new set-up record; nothing measured under an earlier set-up
        is settled, read back by `run()` or found by `latest`.
        """
        for index in range(len(self._results) - 1, -1, -1):
            if self._results[index].kind == "setup":
                return index
        return 0

    @property
    def setup(self):
        """The current set-up record (the latest one), or None in an empty journal."""
        return self._results[self.start] if self._results and self._results[self.start].kind == "setup" else None

    def current(self):
        """The results recorded under the current set-up, its record first."""
        return self._results[self.start :]

    def settled(self, upto=None):
        """Returns the hyperparameters settled so far under the current set-up; later results win.

        Args:
            upto: Only the first `upto` results of the journal count (what was
                settled when the result at that index ran); None counts all.
        """
        hyperparameters = {}
        for result in self._results[self.start : upto]:
            hyperparameters.update(result.settles())
        return hyperparameters

    def source(self, name, current=None):
        """The latest result that settled `name`, skipping those no longer holding under `current`.

        Args:
            name: A settled hyperparameter, e.g. "learning_rate".
            current: The settings in force (see `stale`); None skips nothing.

        Returns:
            The `Result`, or None when nothing (still valid) settled it.
        """
        for result in reversed(self.current()):
            if name in result.settles() and (current is None or stale_reason(result, name, current) is None):
                return result
        return None

    def measured_at(self, setting):
        """Settled values whose measurement holds for one value of `setting` -> that value.

        E.g. `measured_at("batch_size")` is `{"learning_rate": 32}` after a
        `find_lr` at batch size 32: what must be retuned if the batch size
        changes.
        """
        measured = {}
        for result in self.current():
            if setting in result.depends_on():
                for name in result.settles():
                    measured[name] = result.depends_on()[setting]
        measured.pop(setting, None)
        return measured

    def stale(self, current=None):
        """Returns the settled values whose measurement no longer holds.

        A value is stale when the result that settled it was measured under a
        setting (its `depends_on()`) that differs from the current one, e.g. a
        learning rate found at batch size 32 after batch size 64 was settled.

        Args:
            current: The settings in force; defaults to `settled()`. Pass the
                values a run will actually use (settled plus overrides).

        Returns:
            A dict mapping each stale hyperparameter to the `Result` that
            settled it and a sentence saying why, as `(result, reason)`.
        """
        current = self.settled() if current is None else current
        stale = {}
        for name in self.settled():
            result = self.source(name)
            reason = stale_reason(result, name, current)
            if reason is not None:
                stale[name] = (result, reason)
        return stale

    def latest(self, kind):
        """Returns the most recent result of `kind` under the current set-up, or None."""
        for result in reversed(self.current()):
            if result.kind == kind:
                return result
        return None

    def to_dict(self):
        return {
            "version": _FORMAT_VERSION,
            "id": self.id,
            "results": [result.to_dict() for result in self._results],
        }

    def save(self, path):
        """Writes the journal as JSON, atomically (write, then rename)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(self.to_dict(), file, indent=2)
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a journal is an ordinary file.
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    @classmethod
    def load(cls, path):
        """Reads a journal written by `save`; the result keeps `path`."""
        with open(path) as file:
            data = json.load(file)
        journal = cls(path)
        journal.id = str(data.get("id") or journal.id)  # A journal written before ids gets one.
        journal._results = [Result.from_dict(entry) for entry in data["results"]]
        return journal

    def __len__(self):
        return len(self._results)

    def __getitem__(self, index):
        return self._results[index]

    def __iter__(self):
        return iter(self._results)

    def __str__(self):
        if not self._results:
            return "Journal (empty)"
        lines = [f"Journal ({len(self)} results)"]
        lines += [f"  {number}. {result.summary()}" for number, result in enumerate(self._results, start=1)]
        lines += [f"  STALE: {reason}; run {result.kind} again." for result, reason in self.stale().values()]
        return "\n".join(lines)

    def __repr__(self):
        return f"<Journal path={self.path!r} results={len(self)}>"
