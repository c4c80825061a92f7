"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, a temporary directory, a Unix socket.

initdb refuses to run as root, so the cluster belongs to the `postgres` user when the suite runs as root,
and to the current user otherwise. The server's commands run as `postgres` through setpriv (util-linux):
where a directory above the binaries is closed to other users (a sandbox whose / is 0700), they keep the
one capability of searching directories, and nothing else of root's; elsewhere, none at all.

fsync stays on: the drills kill processes and restart the server, and what they prove must hold on a
real disk. The server listens on no TCP port; clients connect through the socket in the cluster's
directory.

Roles: `postgres` (trust, the suite's own connection) and `notify` (password, what campaigns use), so
that a wrong password is a real authentication failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "s3cret-pg-pass"


def binaries() -> Path | None:
    """The directory of pg_ctl and initdb, or None where PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().parent.joinpath("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def closed_to_others(path: Path) -> bool:
    """Whether a directory on the way to `path` denies search to a user who neither owns it nor is in its group."""
    return any(not os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


class Cluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="notify-pg-"))
        self.data = self.dir / "data"
        self.socket = self.dir / "run"
        self.as_postgres = os.geteuid() == 0
        self.as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"] if self.as_postgres else []
        if self.as_postgres and closed_to_others(bindir):
            # CI once ran where / was 0700: `postgres` could not even execute initdb ("Permission denied"). It may
            # search directories, and PostgreSQL's own access() checks of its binaries see that too (no_setuid_fixup).
            self.as_user += ["--securebits=+no_setuid_fixup", "--inh-caps=+dac_read_search",
                             "--ambient-caps=+dac_read_search"]
        self._n = 0
        self.tcp: tuple[str, int] | None = None  # (address, port) it also listens on, where listen_tcp() asked
        self.port = 5432  # the socket's name carries the port: .s.PGSQL.5432 until listen_tcp() picks one

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            argv = [*self.as_user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if check and done.returncode:
            # What the command said is the only clue to a cluster that will not start: CI once showed just
            # "initdb returned non-zero exit status 1".
            raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}) as "
                               f"{'postgres' if self.as_postgres else 'the current user'}:\n{done.stdout}{done.stderr}")
        return done

    @classmethod
    def started(cls, who: str) -> Cluster:
        """A new cluster, up, for a script (`who` names it in the message where PostgreSQL is missing)."""
        bindir = binaries()
        if bindir is None:
            raise SystemExit(f"{who}: PostgreSQL binaries not found (Debian's postgresql)")
        cluster = cls(bindir)
        cluster.init()
        return cluster

    def init(self) -> None:
        self.socket.mkdir()
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.socket, "postgres", "postgres")
        self.dir.chmod(0o755)
        pwfile = self.dir / "pw"
        pwfile.write_text("x\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-instructions",
                  "-E", "UTF8", "--locale=C.UTF-8")
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\nlocal all all scram-sha-256\n")
        self.start()
        self.sql(f"CREATE ROLE notify LOGIN PASSWORD '{PASSWORD}' CREATEDB")

    def start(self) -> None:
        """Starts the server and waits until it answers. Right after an immediate stop (a simulated
        crash) on a loaded host, the first start can fail while the old server's processes are still
        leaving, or outlast pg_ctl's wait while it recovers; both are retried, and a server that
        still will not start fails with its own log."""
        listen = f"-c listen_addresses='{self.tcp[0]}' -p {self.port}" if self.tcp else "-c listen_addresses=''"
        opts = f"-k {self.socket} {listen} -c fsync=on -c max_connections=100 -c shared_buffers=32MB"
        deadline = time.monotonic() + 120
        while True:
            started = self._cmd("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w",
                                "start", check=False)
            if started.returncode == 0 or self._answers(until=time.monotonic() + 10):
                return
            if time.monotonic() > deadline:
                log = (self.dir / "log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{log}")
            time.sleep(1)

    def _answers(self, until: float) -> bool:
        """Whether the server accepts a query before `until` (it may still be recovering)."""
        while time.monotonic() < until:
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", str(self.socket), "-p", str(self.port), "-U", "postgres"],
                                   capture_output=True, timeout=30)
            if ready.returncode == 0:
                return True
            if ready.returncode == 2:  # no server at all: nothing to wait for
                return False
            time.sleep(0.5)
        return False

    def listen_tcp(self, address: str = "127.0.0.1") -> tuple[str, int]:
        """Restarts the server listening on `address` too (a free port), with password logins from there: for the
        network drills and the latency benchmark, which put a link between the workers and the database."""
        import socket

        first = address.split(",")[0]  # several addresses, comma-separated: one port on each
        family = socket.AF_INET6 if ":" in first else socket.AF_INET
        with socket.socket(family) as s:
            s.bind((first, 0))
            port = s.getsockname()[1]
        self.tcp, self.port = (address, port), port
        with (self.data / "pg_hba.conf").open("a") as fh:
            fh.write(f"host all all {first}/{128 if family == socket.AF_INET6 else 32} scram-sha-256\n"
                     "host all all 0.0.0.0/0 scram-sha-256\n")
        self.stop()
        self.start()
        return self.tcp

    def tcp_url(self, db: str, host: str, port: int) -> str:
        """The URL of database `db` reached over TCP at host:port (the server itself, or a proxy in front of it)."""
        return f"postgresql://notify:{PASSWORD}@{host}:{port}/{db}"

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def sql(self, statement: str, db: str = "postgres") -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-h", str(self.socket), "-p", str(self.port), "-U", "postgres", "-d", db,
                              "-v", "ON_ERROR_STOP=1", "-At", "-c", statement],
                             check=True, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    def new_database(self) -> str:
        """A fresh database owned by `notify`; returns its URL (password included, as a user would give it)."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        self.sql(f"CREATE DATABASE {name} OWNER notify")
        return self.url(name)

    def url(self, db: str, password: str = PASSWORD) -> str:
        return f"postgresql://notify:{password}@/{db}?host={self.socket}&port={self.port}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def trial() -> None:
    """`make postgres-trial`: a private throwaway cluster, as the tests start one, for trying notify on PostgreSQL.
    Prints the URL and waits; Ctrl-C (or SIGTERM) stops the server and deletes its data."""
    import secrets
    import signal

    cluster = Cluster.started("make postgres-trial")
    password = secrets.token_urlsafe(12)
    cluster.sql(f"ALTER ROLE notify PASSWORD '{password}'")
    cluster.sql("CREATE DATABASE notify OWNER notify")
    url = cluster.url("notify", password)
    print(f"A throwaway PostgreSQL is running in {cluster.dir} (its Unix socket only: no TCP port).\n"
          f"In another terminal:\n\n    export NOTIFY_STATE_URL='{url}'\n\n"
          "and add [state] url_env = \"NOTIFY_STATE_URL\" to the campaign's campaign.toml (README: \"Running on several hosts\").\n"
          "Ctrl-C here stops the server and deletes everything in it.", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            signal.pause()
    finally:
        cluster.destroy()
        print("Stopped; the trial cluster and its data are gone.", flush=True)


if __name__ == "__main__":
    trial()
