"""Where a search's Optuna study lives: the journal file beside --out (one process), or a database
(PostgreSQL, MySQL, SQLite) that many worker processes share through Optuna's RDBStorage.

A database URL may carry a password. It stays in `StudyStore.url` and goes to the driver only:
every message shows `StudyStore.shown` (the password as ***), and `redacting()` rewrites any error
that would still spell it out.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from th_edit.errors import UserError, missing_package

DEFAULT_STUDY = "th-edit-search"  # the study name of every search before --study existed
SCHEMES = ("postgresql", "mysql", "sqlite")
# How much longer than the heartbeat interval a trial may go silent before it counts as dead.
GRACE_FACTOR = 3
SQLITE_LOCK_TIMEOUT_S = 60  # several workers on one SQLite file wait for each other's writes
# The PyPI package of each database driver SQLAlchemy may pick (postgresql:// means psycopg2,
# mysql:// mysqlclient; mysql+pymysql:// names another).
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "mysqldb": "mysqlclient",
                   "pymysql": "pymysql"}
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


@dataclass(frozen=True)
class StudyStore:
    """One study in one storage. `url` may hold a password: never print it, print `shown`."""

    name: str = DEFAULT_STUDY
    journal: Path | None = None
    url: str | None = None
    heartbeat: int = 60  # seconds between a running trial's heartbeats (databases only)

    @classmethod
    def parse(cls, url: str | None, journal: Path, name: str, heartbeat: int) -> StudyStore:
        """--storage (None: the journal file) and --study, checked before anything loads."""
        if not name.strip():
            raise UserError("--study: the study name is empty")
        if url is None:
            return cls(name=name, journal=journal, heartbeat=heartbeat)
        store = cls(name=name, url=url, heartbeat=heartbeat)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise UserError(f"--storage: {store.shown} is not a database URL (postgresql://user@host/db, "
                            "mysql://user@host/db or sqlite:///path.db)") from None
        scheme = parsed.get_backend_name()
        if scheme not in SCHEMES:
            raise UserError(f"--storage: {store.shown}: unsupported database '{scheme}' (use one of {', '.join(SCHEMES)})")
        dialect = parsed.get_dialect()
        try:
            dialect.import_dbapi()
        except ImportError:
            package = DRIVER_PACKAGES.get(dialect.driver, dialect.driver)
            raise missing_package(package, f"a {scheme} study storage") from None
        return store

    @property
    def shared(self) -> bool:
        """A database: worker processes can join, and running trials send heartbeats."""
        return self.url is not None

    @property
    def password(self) -> str | None:
        if self.url is None:
            return None
        match = _URL_PASSWORD.search(self.url)
        return match.group(2) if match and match.group(2) else None

    @property
    def shown(self) -> str:
        """The storage as messages name it: the URL with its password as ***, or the journal path."""
        return redact_url(self.url) if self.url is not None else str(self.journal)

    @property
    def scheme(self) -> str:
        return self.url.split(":", 1)[0].split("+", 1)[0] if self.url else "journal"

    def redact(self, text: str) -> str:
        """`text` with this store's password (if any) replaced by ***."""
        text = redact_url(text)
        password = self.password
        if password:
            from urllib.parse import unquote

            for spelling in {password, unquote(password)}:
                text = text.replace(spelling, "***")
        return text

    def optuna_storage(self, stale_trial_callback=None):
        """The Optuna storage. Databases get heartbeats: a trial silent for GRACE_FACTOR heartbeats
        is failed by the next process that looks, and handed to `stale_trial_callback`."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in ..." on stderr
        if not self.shared:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(self.journal)))
        engine = {"pool_pre_ping": True}
        if self.scheme == "sqlite":
            engine = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
        heartbeat = {"heartbeat_interval": self.heartbeat, "grace_period": GRACE_FACTOR * self.heartbeat}
        if stale_trial_callback is not None:  # renamed in Optuna 4.9 (the old name still works, with a warning)
            import inspect

            names = inspect.signature(optuna.storages.RDBStorage).parameters
            key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
            heartbeat[key] = stale_trial_callback
        with self.redacting(f"opening the study storage {self.shown}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are, since Optuna 2.9
            return _rdb_storage(self.url, engine, heartbeat)

    def study_names(self) -> list[str]:
        import optuna

        if not self.shared and not (self.journal and self.journal.is_file()):  # JournalFileBackend would create it
            return []
        with self.redacting(f"reading {self.shown}"):
            return [s.study_name for s in optuna.get_all_study_summaries(self.optuna_storage())]

    def exists(self) -> bool:
        return self.name in self.study_names()

    @contextlib.contextmanager
    def redacting(self, doing: str = "") -> Iterator[None]:
        """Database errors become one line (what failed, and the driver's reason), and no error
        that leaves the block spells out the password."""
        try:
            yield
        except UserError as exc:
            if self.password and self.password in str(exc):
                raise UserError(self.redact(str(exc))) from None
            raise
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                reason = lines[0] if lines else type(exc).__name__
                raise UserError(self.redact(f"{doing or 'the study storage'} failed: {reason}")) from None
            if self.password and self.password in str(exc):
                raise UserError(self.redact(f"{doing or 'the study storage'} failed: {exc}")) from None
            raise


def _rdb_storage(url: str, engine: dict, heartbeat: dict, attempts: int = 6):
    """Optuna's RDBStorage. Processes that start together on an empty database race to create its
    tables: the losers fail on a unique key (PostgreSQL's catalog) or on "table ... already exists"
    (SQLite checks, then creates, outside one transaction), and the tables are there once they look again."""
    import optuna

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
        except Exception as exc:
            if attempt == attempts - 1 or not lost_schema_race(exc):
                raise
            time.sleep(0.5 * (attempt + 1))


def lost_schema_race(exc: BaseException) -> bool:
    """Whether `exc` is what a process sees when another one created the same tables first."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if isinstance(exc, IntegrityError):
        return True
    return isinstance(exc, (OperationalError, ProgrammingError)) and "already exists" in str(exc)


def redact_url(text: str) -> str:
    """Every `scheme://user:password@` in `text` with the password as ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}***{m.group(3)}" if m.group(2) else m.group(0), text)
