"""The state directory's layout: every file and folder laufband keeps there, in one place.

::

    .laufband/                  0700; path=, else LAUFBAND_PATH, else ./.laufband
    ├── state.db                the SQLite database (0600), with state.db-journal
    ├── state.lock              guards every transaction (filelock)
    ├── state.queue             the line of workers waiting for state.lock (flock)
    ├── state.holder            who holds state.lock, since when
    ├── user.lock               ``worker.lock``: the users' critical sections
    ├── running/<worker>        a worker's in-flight record (memory-mapped)
    └── results/<wf>/<task>     large results of pmap, by workflow and task number;
        results/<wf>/.<task>.<writer>.tmp   while being written

No name or key a user chose reaches a path: workflows and tasks are numbers there.
Results are pickles, so whoever can write the directory can make its readers run
code: it is created 0700, its files 0600, a directory writable by group or others
or owned by someone else is refused, and nothing in it is followed through a symlink.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import overload

from laufband.errors import StateError
from laufband.options import resolve

DEFAULT_PATH = ".laufband"  # in the working directory, like .snakemake/ or .pytest_cache/
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_TEMPORARY = ".tmp"


class Location:
    """A file or folder that every state directory has, by name.

    ``StateDirectory.database`` is the location (``.name``: ``"state.db"``);
    ``state.database`` is the path of one directory's.
    """

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    @overload
    def __get__(self, state: None, owner: type[StateDirectory]) -> Location: ...

    @overload
    def __get__(self, state: StateDirectory, owner: type[StateDirectory]) -> Path: ...

    def __get__(self, state: StateDirectory | None,
                owner: type[StateDirectory]) -> Location | Path:
        return self if state is None else state.path / self.name


class StateDirectory:
    """Where each file of one state directory lives.

    An absolute path: ``os.fspath``, ``str`` and ``.path`` give it, ``/`` joins a name.

    Args:
        path: The state directory (made absolute; no environment is read: see
            :meth:`resolve` for the user-facing lookup).

    Example:
        >>> state = StateDirectory.resolve(None)  # doctest: +SKIP
        >>> state.create().database  # doctest: +SKIP
        PosixPath('/home/me/project/.laufband/state.db')
    """

    database = Location("state.db", "The SQLite database.")
    journal = Location("state.db-journal", "SQLite's rollback journal of the database.")
    state_lock = Location("state.lock", "The lock every transaction holds.")
    queue = Location("state.queue", "The file whose flock lines up the workers waiting for"
                     " the state lock.")
    holder = Location("state.holder", "The record of who holds the state lock.")
    running = Location("running", "The folder of in-flight records.")
    results = Location("results", "The folder of large results.")
    USER_LOCK = "user.lock"  # see user_lock()

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None = None) -> StateDirectory:
        """Return a worker's state directory: ``path``, else ``LAUFBAND_PATH``, else ./.laufband."""
        if isinstance(path, StateDirectory):
            return path
        return cls(resolve("path", None if path is None else os.fspath(path), DEFAULT_PATH, str))

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> StateDirectory:
        """Return ``path`` as a state directory (itself if it is one already)."""
        return path if isinstance(path, StateDirectory) else cls(path)

    @classmethod
    def find(cls, path: str | os.PathLike[str] | None = None) -> StateDirectory:
        """Return the state directory to read at ``path``.

        ``path`` defaults to ``LAUFBAND_PATH``, else the current directory; the state
        directory is ``path`` itself if it holds a database, else its ``.laufband``.

        Raises:
            StateError: Neither holds a database.
        """
        base = Path(resolve("path", None if path is None else os.fspath(path), ".", str))
        for candidate in (cls(base), cls(base / DEFAULT_PATH)):
            if candidate.database.is_file():
                return candidate
        where = base.absolute()
        msg = (f"no laufband state in {str(where)!r} (looked for {cls.database.name} there and in"
               f" its {DEFAULT_PATH}/): run this where your workers ran, or pass the state"
               " directory")
        raise StateError(msg, path=where)

    def create(self) -> StateDirectory:
        """Create the directory (0700), or check that an existing one is safe to use.

        Raises:
            StateError: It cannot be created or written, is a file, belongs to another
                user or is writable by group or others.
        """
        make_directory(self.path)
        return self

    # -- files and folders in a directory ------------------------------------------------

    def user_lock(self) -> Path:
        """Return the file of ``worker.lock``, ready to open.

        The directory is created, a symlink in the lock's place refused.
        """
        self.create()
        return refuse_symlink(self.path / self.USER_LOCK)

    def in_flight(self, worker: int) -> Path:
        """Return the in-flight record of worker number ``worker``."""
        return self.running / str(worker)

    def results_of(self, wf: int) -> Path:
        """Return the folder of workflow number ``wf``'s large results."""
        return self.results / str(wf)

    def result_file(self, wf: int, seq: int) -> Path:
        """Return the file of the large result of task ``seq`` of workflow ``wf``."""
        return self.results_of(wf) / str(seq)

    @staticmethod
    def temporary(target: Path, writer: str) -> Path:
        """Return the file ``writer`` writes before renaming it to ``target``.

        It is ``.<name>.<writer>.tmp`` beside the target.
        """
        return target.with_name(f".{target.name}.{writer}{_TEMPORARY}")

    @staticmethod
    def temporary_writer(name: str) -> tuple[str, str] | None:
        """Return ``(target name, writer)`` of a temporary file's name; None for others."""
        if not (name.startswith(".") and name.endswith(_TEMPORARY)):
            return None
        target, dot, writer = name[1:-len(_TEMPORARY)].partition(".")
        return (target, writer) if dot else None

    # -- a path object ---------------------------------------------------------------

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"StateDirectory({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateDirectory) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def make_directory(path: Path) -> None:
    """Create a state directory 0700, or check that an existing one is safe to use.

    Results are pickles: whoever can write the directory can make its readers run
    code, so a directory writable by group or others, or owned by someone else, is
    refused rather than used.
    """
    try:
        path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink: reported below
    except OSError as error:
        msg = (f"cannot create state directory {str(path)!r} ({error.strerror}):"
               " pass a writable path=")
        raise StateError(msg, path=path) from None
    try:
        info = os.lstat(path)
    except OSError as error:
        msg = f"cannot read state directory {str(path)!r} ({error.strerror}): pass another path="
        raise StateError(msg, path=path) from None
    if stat.S_ISLNK(info.st_mode):
        try:  # a symlink to a directory is the user's choice; check that one
            info = path.stat()
        except OSError:
            msg = (f"state path {str(path)!r} is a symlink to {str(path.readlink())!r}, which does"
                   " not exist: create that directory, or pass another path=")
            raise StateError(msg, path=path) from None
        path = path.resolve()
    _check_directory(path, info)


def _check_directory(path: Path, info: os.stat_result) -> None:
    """Refuse a state directory that is no directory, not ours, or not private."""
    if not stat.S_ISDIR(info.st_mode):
        msg = f"state path {str(path)!r} is a file, not a directory: pass another path="
        raise StateError(msg, path=path)
    if info.st_uid != os.geteuid():
        msg = (f"state directory {str(path)!r} belongs to another user (uid {info.st_uid}):"
               " use a directory of your own (path= or LAUFBAND_PATH)")
        raise StateError(msg, path=path)
    if info.st_mode & 0o022:
        mode = oct(stat.S_IMODE(info.st_mode))
        msg = (f"state directory {str(path)!r} is writable by group or others (mode {mode}):"
               f" run chmod go-w {str(path)!r}, or use another path=")
        raise StateError(msg, path=path)
    if not os.access(path, os.W_OK | os.X_OK):
        msg = f"state directory {str(path)!r} is not writable: pass a writable path="
        raise StateError(msg, path=path)


def refuse_symlink(path: Path) -> Path:
    """Return ``path``, refusing a symlink there.

    laufband follows none in its state directory: a planted link could make it write
    elsewhere.
    """
    if path.is_symlink():
        msg = (f"{str(path)!r} is a symlink: laufband follows none in its state directory;"
               " remove it, or use another path=")
        raise StateError(msg, path=path)
    return path
