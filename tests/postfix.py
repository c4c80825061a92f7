"""A real Postfix for the tests: Debian's postfix, an instance of its own in a temporary directory.

It listens on 127.0.0.1 (a free port) with STARTTLS (a certificate from a throwaway CA), queues
for real, and delivers only to the local domain `local.test`: `inbox` (and inbox+anything) into one
Maildir, `bounces` (and bounces+token, the VERP return path) into another; any other local user
is accepted and then bounced by Postfix itself, with its own delivery status notification, to the
envelope sender. Nothing leaves the machine: no DNS, no other destination.

Postfix runs its master as root; these tests need root (as the PostgreSQL ones need the postgres
user) and skip only where Postfix is not installed (.ci/run installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .pg import closed_to_others

DOMAIN = "mail.example.org"  # a name email-validator accepts (.test is special-use); nothing resolves it

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.notify.test
mydomain = notify.test
myorigin = $myhostname
mydestination = {domain}, relay.notify.test
mynetworks = 127.0.0.0/8
relay_domains =
local_recipient_maps =
alias_maps = hash:{dir}/aliases
alias_database = hash:{dir}/aliases
allow_mail_to_files = alias
default_privs = nobody
recipient_delimiter = +
smtpd_tls_cert_file = {dir}/cert.pem
smtpd_tls_key_file = {dir}/key.pem
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
biff = no
notify_classes =
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> str | None:
    """Why a real Postfix cannot run here, or None when it can."""
    if not Path("/usr/sbin/postfix").exists() or not Path("/usr/lib/postfix/sbin/master").exists():
        return "Postfix is not installed (Debian's postfix)"
    if os.geteuid() != 0:
        return "Postfix's master runs as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postfix:
    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="notify-postfix-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.inbox = self.dir / "inbox"
        self.bounces = self.dir / "bounces"
        (self.dir / "main.cf").write_text(MAIN_CF.format(dir=self.dir, domain=DOMAIN))
        (self.dir / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.dir / "cert.pem").write_bytes(cert_pem)
        (self.dir / "key.pem").write_bytes(key_pem)
        (self.dir / "key.pem").chmod(0o600)
        (self.dir / "aliases").write_text(f"inbox: {self.inbox}/\nbounces: {self.bounces}/\n"
                                          "postmaster: inbox\nmailer-daemon: inbox\n")
        nobody = pwd.getpwnam("nobody")
        for box in (self.inbox, self.bounces):
            for sub in ("", "new", "cur", "tmp"):
                (box / sub).mkdir(exist_ok=True)
                os.chown(box / sub, nobody.pw_uid, nobody.pw_gid)
        for sub in ("queue", "data"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        self._run("postalias", str(self.dir / "aliases"))

    def _run(self, *argv: str) -> str:
        # Postfix's master and daemons open their files as `postfix` or `nobody` (seteuid). Where / itself is closed
        # to other users (a sandbox whose / is 0700), they could open none ("open lock file ...: Permission denied"),
        # so there they keep root's capabilities across that switch (no_setuid_fixup); elsewhere, as Postfix runs.
        keep = ["setpriv", "--securebits=+no_setuid_fixup", "--"] if closed_to_others(self.dir) else []
        out = subprocess.run([*keep, f"/usr/sbin/{argv[0]}", "-c", str(self.dir), *argv[1:]], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stderr or out.stdout}\n{self.log()}")
        return out.stdout

    def start(self) -> None:
        self._run("postfix", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not start listening on {self.port}\n{self.log()}")

    def stop(self) -> None:
        subprocess.run(["/usr/sbin/postfix", "-c", str(self.dir), "stop"], capture_output=True, timeout=60)

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"

    @staticmethod
    def messages(box: Path) -> list[Path]:
        return sorted((box / "new").glob("*")) + sorted((box / "cur").glob("*"))

    def wait_for(self, inbox: int, bounces: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages(self.inbox)) >= inbox and len(self.messages(self.bounces)) >= bounces:
                return
            time.sleep(0.2)
        raise AssertionError(f"Postfix delivered {len(self.messages(self.inbox))} of {inbox} and bounced "
                             f"{len(self.messages(self.bounces))} of {bounces}\n{self.log()[-4000:]}")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
