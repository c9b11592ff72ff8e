"""Writing outputs without ever destroying data or leaving half of them behind.

Every command that writes files goes through here:
  * `check_new_file` / `check_creatable` refuse, before any work, a file the command did not
    create (unless --force), a name that is not UTF-8 and a place where nothing can be created;
  * `atomic_files` writes a set of files to hidden temporary siblings and renames them into
    place only when all of them are complete, so a full disk or a `kill` leaves none of them;
    `write_files` does so with one writer per file, so that a failure names the file that failed;
  * `resumable_file` guards a file a long run appends to as it goes (the search's journal):
    on failure it goes, with the directories made for it, unless it holds work worth resuming;
  * `rename_noreplace` / `exchange` are the two atomic renames directory replacement needs
    (Linux `renameat2`; elsewhere the caller falls back to a recoverable protocol);
  * an OSError while writing becomes one `UserError` line (`write_error`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from th_edit.errors import UserError

PARTIAL_MARK = ".partial-"


def write_error(path: Path | str, exc: OSError) -> UserError:
    """One line for any OSError met while writing `path` (a full disk most of all)."""
    return UserError(f"writing {path} failed: {write_reason(exc)} (nothing was written)")


def write_reason(exc: OSError) -> str:
    return "no space left on device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))


def check_utf8_name(path: Path) -> None:
    """Names go into JSON, YAML and the model card, which are UTF-8: refuse others up front
    instead of failing at the very end of a run."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"output path {os.fsencode(path)!r} is not valid UTF-8; choose a UTF-8 name") from None


def check_creatable(path: Path) -> None:
    """A file or directory can be created at `path`: its nearest existing ancestor is a writable
    directory. Checked up front so a long run does not fail at its very end."""
    check_utf8_name(path)
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: {ancestor} is not writable")


def check_new_file(path: Path, force: bool) -> None:
    """`path` may be written: it does not exist yet, or --force allows replacing a file there."""
    if os.path.lexists(path):
        if path.is_dir():
            raise UserError(f"{path} is a directory, not a file")
        if not force:
            raise UserError(f"{path} already exists (pass --force to replace it)")
    check_creatable(path)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the duration, so that `kill` runs the same clean-up
    (finally blocks, context managers) as Ctrl-C does. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_files(paths: list[Path], force: bool) -> Iterator[list[Path]]:
    """Yield one temporary sibling per path; write them, and when the block ends without error
    every one is renamed into place. Otherwise (an error, Ctrl-C, `kill`) none of them appears,
    the temporaries are removed, and directories created for them too. An OSError becomes one
    UserError line. A temporary left by `kill -9` is named `.<name>.partial-<pid>-*` and is
    removed by the next write of the same file."""
    created_dirs: list[Path] = []
    temporaries: list[Path] = []
    placed: list[Path] = []
    with sigterm_as_exit():
        try:
            for path in paths:
                created_dirs += make_parents(path.parent)
                remove_stale_partials(path)
                # The suffix stays last: writers such as matplotlib pick the format from it.
                fd, name = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}{os.getpid()}-", suffix=path.suffix,
                                            dir=path.parent)
                os.close(fd)
                os.chmod(name, 0o666 & ~umask())  # mkstemp makes it private; outputs should look like any file
                temporaries.append(Path(name))
            yield list(temporaries)
            for temporary in temporaries:
                fsync_path(temporary)
            for temporary, path in zip(temporaries, paths):
                if force:
                    os.replace(temporary, path)
                else:
                    try:
                        rename_noreplace(temporary, path)
                    except FileExistsError:
                        raise UserError(f"{path} appeared while writing (pass --force to replace it)") from None
                placed.append(path)
            for directory in {path.parent for path in paths}:
                fsync_path(directory)
        except OSError as exc:
            _undo(placed, temporaries, created_dirs)
            raise write_error(_failed_file(exc, paths, temporaries), exc) from None
        except BaseException:
            _undo(placed, temporaries, created_dirs)
            raise


def _failed_file(exc: OSError, paths: list[Path], temporaries: list[Path]) -> Path | str:
    """The output whose write raised `exc`, when the error says (its file name) or there is only
    one; otherwise all of them: naming the first would blame a file that may be fine. Writers
    that do not name their file (matplotlib, write() on a full disk) go through `write_files`."""
    named = [p for t, p in zip(temporaries, paths) if exc.filename in (str(t), str(p))]
    if named or len(paths) == 1:
        return (named or paths)[0]
    return ", ".join(map(str, paths))


def write_files(writers: Mapping[Path, Callable[[Path], object]], force: bool) -> None:
    """`atomic_files` with one writer per output (called with the temporary path to write): all
    files appear or none does, and a write that fails is one line naming its own output."""
    paths = list(writers)
    with atomic_files(paths, force) as temporaries:
        for path, temporary in zip(paths, temporaries):
            try:
                writers[path](temporary)
            except OSError as exc:
                raise write_error(path, exc) from None  # atomic_files removes every temporary


@contextlib.contextmanager
def resumable_file(path: Path, worth_keeping: Callable[[Path], str | None]) -> Iterator[None]:
    """Guard a file that a long run appends to as it goes (so it cannot be staged like
    `atomic_files`), from before it is created until the run's last output is written.

    If the block fails, the file is kept when it existed before (the user is resuming it) or when
    `worth_keeping(path)` returns a note (what it holds, how to resume), which then ends the error
    line. Otherwise it is removed, with the directories made for it: a failed run leaves nothing,
    and no stub that blocks the next run. An OSError about the file (or naming no file, as a
    write() on a full disk does) becomes one line; any other exception passes unchanged."""
    existed = os.path.lexists(path)
    try:
        created_dirs = make_parents(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with sigterm_as_exit():  # `kill` cleans up like Ctrl-C
            yield
    except BaseException as exc:
        note = worth_keeping(path) if os.path.lexists(path) else None
        if not existed and note is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            remove_empty(created_dirs)
        if isinstance(exc, OSError) and exc.filename in (None, str(path)):
            exc = write_error(path, exc) if note is None else UserError(f"writing {path} failed: {write_reason(exc)}")
        if isinstance(exc, UserError):
            raise (UserError(f"{exc}; {note}") if note else exc) from None
        raise


def _undo(placed: list[Path], temporaries: list[Path], created_dirs: list[Path]) -> None:
    # A file already renamed into place is ours only if it did not exist before; renames within
    # one directory do not fail in practice, so this is a last resort.
    for path in placed + temporaries:
        with contextlib.suppress(OSError):
            path.unlink()
    remove_empty(created_dirs)


def remove_empty(directories: list[Path]) -> None:
    """rmdir what `make_parents` created, innermost first, if nothing else was put there."""
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            directory.rmdir()


def make_parents(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except OSError:
        remove_empty(created)  # a full disk half way down leaves none of them
        raise
    return created


# ----------------------------------------------------------------------------------------------
# Leftovers of killed runs, recognised by the process id in their name


def leftover_pid(path: Path, mark: str) -> int | None:
    """The pid in `.<name><mark><pid>-<random>`, or None when the name has none."""
    pid_text = path.name.split(mark, 1)[1].split("-", 1)[0] if mark in path.name else ""
    return int(pid_text) if pid_text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: Path) -> None:
    """Remove `.<target name>.partial-<pid>-*` siblings whose process is gone (killed runs)."""
    import glob

    for candidate in target.parent.glob(f".{glob.escape(target.name)}{PARTIAL_MARK}*"):
        pid = leftover_pid(candidate, PARTIAL_MARK)
        if pid is not None and not pid_alive(pid):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    candidate.unlink()


# ----------------------------------------------------------------------------------------------
# Atomic renames


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, some musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


def _rename2(source: Path, destination: Path, flags: int) -> bool:
    """renameat2(source, destination, flags): True when done, False when this platform or file
    system does not support it (the caller falls back); any other failure raises OSError."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(destination))


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux RENAME_EXCHANGE). False when the
    platform or file system cannot; then nothing happened."""
    return _rename2(first, second, _RENAME_EXCHANGE)


def rename_noreplace(source: Path, destination: Path) -> None:
    """Rename, but never over something that exists (FileExistsError). Atomic where renameat2
    is available; elsewhere checked just before the rename."""
    if _rename2(source, destination, _RENAME_NOREPLACE):
        return
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, "File exists", str(destination))
    os.rename(source, destination)


# ----------------------------------------------------------------------------------------------
# Durability


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
