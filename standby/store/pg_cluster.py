"""Throwaway PostgreSQL clusters for tests, drills and benchmarks: `initdb` + `pg_ctl` in a temp dir, on a free port.

No pytest here, so fault tests, benchmarks and scripts can use it too; the fixtures are in tests/pg_fixtures.py.

PostgreSQL refuses to run as root. When we are root, the server runs as an unprivileged OS user (`postgres` if it
exists, else `standby-pg`, created on first use) via `runuser`, and the cluster's directory belongs to that user.
Otherwise it runs as the current user.

    cluster = PgCluster()          # finds the binaries itself, or pass bindir
    cluster.start()
    cluster.create_database("t1")
    engine = make_engine(cluster.url("t1"))
    ...
    cluster.cleanup()              # stop and remove the directory
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from standby.processes import pid_alive

SUPERUSER = "postgres"  # the database role initdb creates (-U)
FALLBACK_OS_USER = "standby-pg"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT_S = 60
LOG_TAIL_LINES = 40
# A Unix socket path must fit in sun_path (107 bytes on Linux); ".s.PGSQL.NNNNN" takes 15 of them.
MAX_SOCKET_DIR = 90

TEST_SETTINGS = {
    # Durability off: a test cluster is thrown away, and this makes commits much cheaper. fsync=off survives a
    # kill -9 of the server (the OS still holds the writes), but synchronous_commit=off does NOT: commits from
    # the last ~wal_writer_delay (200 ms) sit in shared WAL buffers and die with the server. A fault test that
    # kills the server and checks nothing acknowledged was lost must pass settings={"synchronous_commit": "on"}.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Logical decoding for the replication path (wal2json / pgoutput slots).
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "shared_buffers": "128MB",
    "max_connections": "200",
    # Quieter, more useful logs for a test run.
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "timezone": "'UTC'",
}


class PgClusterError(RuntimeError):
    """A cluster could not be created, started or stopped; the message ends with the tail of the server log."""


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(path: str) -> tuple:
    # /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6); anything odd sorts last.
    version = Path(path).parent.name
    return tuple(int(p) for p in version.split(".")) if re.fullmatch(r"\d+(\.\d+)*", version) else (-1,)


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    Looks at $PG_BINDIR, then `pg_config --bindir`, then `initdb` on PATH, then /usr/lib/postgresql/*/bin (newest
    version first). A candidate counts only if all three server binaries are there (Debian's pg_config and
    client-only packages can point at a directory without a server)."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
        candidates.append(Path(initdb).parent)
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        candidates.append(Path(path))
    for candidate in candidates:
        if candidate.is_dir() and _has_server_binaries(candidate):
            return candidate
    return None


_user_lock = threading.Lock()


def server_os_user() -> str | None:
    """The OS user the server runs as: None (ourselves) unless we are root, else an unprivileged user."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        for name in (SUPERUSER, FALLBACK_OS_USER):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                pass
        result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                 FALLBACK_OS_USER], capture_output=True, text=True)
        try:
            pwd.getpwnam(FALLBACK_OS_USER)  # also covers another process having created it first
        except KeyError:
            raise PgClusterError(f"running as root, PostgreSQL needs an unprivileged OS user and `useradd "
                                 f"{FALLBACK_OS_USER}` failed: {result.stderr.strip()}") from None
        return FALLBACK_OS_USER


_ports_lock = threading.Lock()
_ports_taken: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed to another cluster of this process."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_taken:
                _ports_taken.add(port)
                return port
    raise PgClusterError("found no free TCP port on 127.0.0.1")


def _children_of(pid: int) -> list[int]:
    kids = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry.split("/")[2]))
    return kids


class PgCluster:
    """One throwaway cluster: its own directory, port and socket directory, so several can run at once."""

    def __init__(self, bindir: Path | str | None = None, *, name: str = "pg", settings: dict[str, str] | None = None,
                 base_dir: Path | str | None = None):
        found = Path(bindir) if bindir else find_pg_bin()
        if found is None or not _has_server_binaries(found):
            raise PgClusterError(f"no PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) in "
                                 f"{bindir or 'pg_config --bindir, PATH or /usr/lib/postgresql/*/bin'}")
        self.bindir = found
        self.name = name
        self.extra_settings = dict(settings or {})
        self._base_parent = Path(base_dir) if base_dir else None
        self.os_user: str | None = None
        self.base: Path | None = None
        self.port: int | None = None
        self._initialised = False

    # --- paths -------------------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._require_base() / "data"

    @property
    def log_path(self) -> Path:
        return self._require_base() / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self._require_base()

    def _require_base(self) -> Path:
        if self.base is None:
            raise PgClusterError(f"cluster {self.name} was never started")
        return self.base

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "PgCluster":
        """initdb on first start (fresh temp dir, free port), then start and wait until it accepts connections.
        A later start (after stop, kill9) reuses the directory and the port."""
        if not self._initialised:
            self._create()
        elif self.is_running():
            return self
        self._clear_stale_pid_file()
        for attempt in range(3):
            try:
                self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_path), what="start")
                return self
            except PgClusterError as exc:
                # Another process may have taken the port between free_port() and bind(): take a fresh one.
                if attempt == 2 or "could not bind" not in str(exc) or self.is_running():
                    raise
                self.port = free_port()
                self._write_settings()
        raise AssertionError("unreachable")

    def _create(self) -> None:
        self.os_user = server_os_user()
        parent = self._base_parent or Path(tempfile.gettempdir())
        if len(str(parent)) > MAX_SOCKET_DIR - 30:
            parent = Path("/tmp")
        self.base = Path(tempfile.mkdtemp(prefix=f"standby-{self.name}-", dir=parent))
        _live_clusters.add(self)
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._run([self.bindir / "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER,
                   "--encoding=UTF8", "--locale=C", "--no-sync"], what="initdb")
        self.port = free_port()
        self._write_settings()
        self._initialised = True

    def _write_settings(self) -> None:
        settings = {**TEST_SETTINGS, "listen_addresses": "'127.0.0.1'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.socket_dir}'", **self.extra_settings}
        lines = [f"{key} = {value}" for key, value in settings.items()]
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:  # appended: later lines win over initdb's defaults
            f.write("\n# --- tests/pg_cluster.py ---\n" + "\n".join(lines) + "\n")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate). Stopping a stopped cluster does nothing."""
        if not self._initialised or not self.is_running():
            return
        self._pg_ctl("stop", "-m", mode, "-w", "-t", str(START_TIMEOUT_S), what=f"stop -m {mode}")

    def restart(self, mode: str = "fast") -> "PgCluster":
        self.stop(mode)
        return self.start()

    def kill9(self) -> int:
        """SIGKILL the postmaster, as a crash would, and wait until it and its backends are gone (backends exit on
        their own once they see the postmaster die). Returns the killed pid. `start()` then runs crash recovery.

        With the default synchronous_commit=off, the last few hundred ms of commits are lost by design; fault
        tests that count acknowledged writes need PgCluster(settings={"synchronous_commit": "on"})."""
        pid = self.postmaster_pid()
        if pid is None:
            raise PgClusterError(f"cluster {self.name} is not running; nothing to kill")
        children = _children_of(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not any(pid_alive(c) for c in children):
                return pid
            time.sleep(0.02)
        raise PgClusterError(self._with_log(f"postmaster {pid} or its backends still alive 30 s after SIGKILL"))

    def cleanup(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove the cluster's directory."""
        if self.base is None:
            return
        try:
            if self._initialised and self.is_running():
                try:
                    self.stop("fast")
                except PgClusterError:
                    try:
                        self.stop("immediate")
                    except PgClusterError:
                        self.kill9()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            if self.port is not None:
                with _ports_lock:
                    _ports_taken.discard(self.port)
            _live_clusters.discard(self)
            self.base, self._initialised = None, False

    def describe(self) -> dict:
        """What `adopt` needs to find this cluster again from another process (e.g. to remove one a killed run
        left behind)."""
        return {"bindir": str(self.bindir), "name": self.name, "base": str(self._require_base()), "port": self.port,
                "os_user": self.os_user}

    @classmethod
    def adopt(cls, described: dict) -> "PgCluster":
        """The cluster `describe()` gave, as started: `cleanup()` stops it and removes its directory."""
        cluster = cls(described["bindir"], name=described["name"])
        cluster.base, cluster.port, cluster.os_user = Path(described["base"]), described["port"], described["os_user"]
        cluster._initialised = True
        return cluster

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # --- state -------------------------------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid if that process is alive, else None."""
        if self.base is None:
            return None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def _clear_stale_pid_file(self) -> None:
        # After kill9 the postmaster may linger as a zombie (no init reaping it in a container); PostgreSQL would
        # take the zombie's pid for a live postmaster. kill9 waited for the backends, so the file is stale.
        # The socket's lock file names the same pid and is refused the same way.
        for lock in [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]:
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if not pid_alive(pid):
                lock.unlink(missing_ok=True)

    # --- databases and URLs ------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise PgClusterError(f"cluster {self.name} was never started")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (for psycopg directly, psql, pg_recvlogical)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def execute(self, sql: str, params: tuple | None = None, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit (CREATE DATABASE cannot run in a transaction); return its rows."""
        import psycopg  # the driver is a dependency of the engine; imported late so this module loads without it

        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (optionally a copy of `template`, which must have no open connections); return
        its SQLAlchemy URL."""
        from psycopg import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self._psycopg_autocommit(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any sessions still connected to it."""
        from psycopg import sql

        self._psycopg_autocommit(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _psycopg_autocommit(self, statement) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    # --- running commands --------------------------------------------------------------------------------------

    def _pg_ctl(self, *args: str, what: str) -> None:
        self._run([self.bindir / "pg_ctl", "-D", str(self.data_dir), *args], what=what)

    def _run(self, argv: list, *, what: str) -> None:
        argv = [str(a) for a in argv]
        if self.os_user:
            argv = ["runuser", "-u", self.os_user, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        try:
            # cwd: the server user may not be allowed into ours, and initdb/postgres resolve paths from it.
            result = subprocess.run(argv, cwd=self.base, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=START_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired as exc:
            raise PgClusterError(self._with_log(f"{what} of cluster {self.name} timed out: {' '.join(argv)}")) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PgClusterError(self._with_log(
                f"{what} of cluster {self.name} failed (exit {result.returncode}): {' '.join(argv)}\n{output}"))

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, PgClusterError):
            return "(no server log)"

    def _with_log(self, message: str) -> str:
        return f"{message}\n--- last lines of the server log ---\n{self.log_tail()}"

    def __repr__(self) -> str:
        return f"PgCluster({self.name!r}, port={self.port}, base={str(self.base)!r})"


_live_clusters: set[PgCluster] = set()


@atexit.register
def _cleanup_leftovers() -> None:
    """A safety net: no server outlives the interpreter that started it, even if a fixture never finished."""
    for cluster in list(_live_clusters):
        try:
            cluster.cleanup()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
