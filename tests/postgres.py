"""A throwaway PostgreSQL server for the tests: the distribution's binaries (Debian's `postgresql`
package), a fresh cluster in a temporary directory, listening on a unix socket there only (no TCP
address at all), removed at the end.

initdb refuses to run as root: as root the cluster belongs to the `postgres` system user that the
package creates, and its commands run through runuser.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ADMIN = "postgres"


def find_bin_dir() -> Path | None:
    """The newest installed server's bin directory (initdb is not on PATH on Debian)."""
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class Server:
    socket_dir: Path
    bin_dir: Path
    root: Path

    def url(self, user: str = ADMIN, database: str = ADMIN, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@/{database}?host={self.socket_dir}"

    def sql(self, *statements: str, database: str = ADMIN) -> list[tuple]:
        import psycopg

        rows: list[tuple] = []
        with psycopg.connect(host=str(self.socket_dir), user=ADMIN, dbname=database, autocommit=True) as connection:
            for statement in statements:
                cursor = connection.execute(statement)
                if cursor.description:
                    rows += cursor.fetchall()
        return rows

    def create_database(self, name: str, owner: str = ADMIN, password: str | None = None) -> None:
        if owner != ADMIN:
            self.sql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE {name} OWNER {owner}")

    def dump(self, database: str) -> str:
        """Every row of every table of `database`, as text."""
        tables = [r[0] for r in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=database)]
        return "\n".join(repr(self.sql(f'SELECT * FROM "{table}"', database=database)) for table in tables)

    def stop(self) -> None:
        _run(self.bin_dir / "pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _as_owner() -> list[str]:
    return ["runuser", "-u", ADMIN, "--"] if os.geteuid() == 0 else []


def _run(*command, check: bool = True) -> subprocess.CompletedProcess:
    # cwd: the postgres user may not enter the test's working directory
    return subprocess.run([*_as_owner(), *map(str, command)], check=check, capture_output=True, text=True, timeout=120,
                          cwd="/tmp")


def start() -> Server:
    """Start a server, or raise RuntimeError saying why not."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="thpg-", dir="/tmp"))  # short: a socket path has at most 107 characters
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, ADMIN, ADMIN)
    try:
        _run(bin_dir / "initdb", "-D", root / "data", "-U", ADMIN, "--auth-local=trust", "--no-sync")
        # The admin connects without a password; every other role must give its password.
        (hba := root / "data" / "pg_hba.conf").write_text(f"local all {ADMIN} trust\nlocal all all scram-sha-256\n")
        if os.geteuid() == 0:
            shutil.chown(hba, ADMIN, ADMIN)
        options = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=50"
        _run(bin_dir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o", options, "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        detail = getattr(exc, "stderr", "") or str(exc)
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {detail.strip()} {log.strip()}") from None
    return Server(root, bin_dir, root)
