"""A directory for the VM tests (tests/vm/test_vm_directory.py, bench_p4dir.py):
a real slapd on 127.0.0.1 only, with its own configuration and database
under /run (not the package's), reached through SSSD (nss_sss, with its
cache) or nslcd (libnss-ldapd, no cache), one at a time.

vagrant/provision.sh installs slapd, sssd-ldap, libnss-sss, nslcd and
libnss-ldapd switched off and out of nsswitch.conf; these context managers
turn them on and put everything back (nsswitch.conf, sssd.conf, nslcd.conf,
SSSD's cache, the daemons stopped), also when a test fails.
"""

import contextlib
import os
import shutil
import signal
import subprocess

import vmlib
from vmlib import run

SUFFIX = "dc=pamvrf,dc=test"
PORT = 3389
URI = f"ldap://127.0.0.1:{PORT}/"
RUN = "/run/pam-vrf-test-ldap"
NSSWITCH = "/etc/nsswitch.conf"
SSSD_CONF = "/etc/sssd/sssd.conf"
NSLCD_CONF = "/etc/nslcd.conf"
SSSD_CACHE = ("/var/lib/sss/db", "/var/lib/sss/mc")

SLAPD_CONF = f"""# tests/vm/vm_directory.py: a throwaway directory on 127.0.0.1:{PORT}
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {RUN}/slapd.pid
argsfile {RUN}/slapd.args
loglevel none
sizelimit unlimited
database mdb
maxsize 268435456
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
directory {RUN}/db
index objectClass eq
index uid,cn,memberUid eq
index uidNumber,gidNumber eq
access to * by * read
"""


def ldif(users, groups):
    """LDIF of the tree: users [(name, uid, gid, home)], groups [(name, gid, [member names])] (RFC 2307)."""
    out = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: pamvrf\ndc: pamvrf\n",
           f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n"]
    for name, uid, gid, home in users:
        out.append(f"dn: uid={name},ou=people,{SUFFIX}\nobjectClass: account\nobjectClass: posixAccount\n"
                   f"uid: {name}\ncn: {name}\nuidNumber: {uid}\ngidNumber: {gid}\nhomeDirectory: {home}\n"
                   f"loginShell: /bin/bash\n")
    for name, gid, members in groups:
        out.append(f"dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: posixGroup\ncn: {name}\ngidNumber: {gid}\n"
                   + "".join(f"memberUid: {m}\n" for m in members))
    return "\n".join(out)


class Slapd:
    """slapd of our own on 127.0.0.1:PORT; stop() and start() it to take the directory down and up."""

    def __init__(self, users, groups):
        shutil.rmtree(RUN, ignore_errors=True)
        os.makedirs(f"{RUN}/db", mode=0o700)
        with open(f"{RUN}/slapd.conf", "w") as f:
            f.write(SLAPD_CONF)
        with open(f"{RUN}/data.ldif", "w") as f:
            f.write(ldif(users, groups))
        run("slapadd", "-q", "-f", f"{RUN}/slapd.conf", "-l", f"{RUN}/data.ldif", timeout=600)

    def pid(self):
        try:
            with open(f"{RUN}/slapd.pid") as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def answers(self):
        return subprocess.run(["ldapsearch", "-x", "-LLL", "-H", URI, "-b", SUFFIX, "-s", "base", "dn"],
                              capture_output=True, timeout=30).returncode == 0

    def start(self):
        run("slapd", "-f", f"{RUN}/slapd.conf", "-h", URI)
        vmlib.wait_until("slapd to answer", self.answers, timeout=60)

    def stop(self):
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            vmlib.wait_until("slapd to stop", lambda: self.pid() is None, timeout=60)
        assert not self.answers(), "slapd still answers"

    def close(self):
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(RUN, ignore_errors=True)


@contextlib.contextmanager
def slapd(users, groups):
    server = Slapd(users, groups)
    try:
        server.start()
        yield server
    finally:
        server.close()


def _nsswitch(source):
    """nsswitch.conf with `source` after the others on the passwd and group lines."""
    with open(NSSWITCH) as f:
        lines = f.read().splitlines()
    out = [line + f" {source}" if line.split(":")[0] in ("passwd", "group") else line for line in lines]
    return "\n".join(out) + "\n"


SSSD_TEMPLATE = f"""# tests/vm/vm_directory.py (temporary)
[sssd]
services = nss
domains = pamvrf

[nss]
{{nss}}

[domain/pamvrf]
id_provider = ldap
auth_provider = none
access_provider = permit
ldap_uri = {URI}
ldap_search_base = {SUFFIX}
ldap_schema = rfc2307
ldap_id_use_start_tls = false
ldap_network_timeout = 3
ldap_opt_timeout = 5
cache_credentials = false
enumerate = false
entry_cache_timeout = 5400
"""

NSLCD_TEMPLATE = f"""# tests/vm/vm_directory.py (temporary)
uid nslcd
gid nslcd
uri {URI}
base {SUFFIX}
bind_timelimit 3
timelimit 5
reconnect_sleeptime 1
reconnect_retrytime 2
"""


def clear_sssd_cache():
    """SSSD's on-disk and in-memory caches emptied (sssd must be stopped)."""
    for directory in SSSD_CACHE:
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    os.unlink(path)


def _sssd_conf_owners():
    """sssd.conf's (uid, gid, mode) to try in turn: root:root 0600 (SSSD 2.8,
    Debian 12, refuses anything else), then root:sssd 0640 (an SSSD that runs
    as its own user)."""
    out = [(0, 0, 0o600)]
    with contextlib.suppress(KeyError):
        import grp
        out.append((0, grp.getgrnam("sssd").gr_gid, 0o640))
    return out


class Sssd:
    name = "sssd"

    def restart(self, cold=False):
        """Restart sssd; cold: with its caches emptied first."""
        run("systemctl", "stop", "sssd.service", check=False)
        if cold:
            clear_sssd_cache()
        run("systemctl", "start", "sssd.service", timeout=120)


class Nslcd:
    name = "nslcd"


@contextlib.contextmanager
def backend(kind, probe_user, nss_options=""):
    """Turn SSSD or nslcd on against our slapd, in nsswitch.conf after files;
    waits until `probe_user` resolves. Yields Sssd() or Nslcd()."""
    if kind == "sssd":
        conf_path, text, unit, source, handle = SSSD_CONF, SSSD_TEMPLATE.format(nss=nss_options), \
            "sssd.service", "sss", Sssd()
    else:
        conf_path, text, unit, source, handle = NSLCD_CONF, NSLCD_TEMPLATE, "nslcd.service", "ldap", Nslcd()
    with contextlib.ExitStack() as stack:
        stack.enter_context(vmlib.file_replaced(conf_path, text, mode=0o600))
        stack.callback(run, "systemctl", "stop", unit, check=False)
        if kind == "sssd":
            run("systemctl", "stop", unit, check=False)
            clear_sssd_cache()
            stack.callback(clear_sssd_cache)
            # `services = nss` makes Debian's socket-activated sssd-nss.socket
            # (wanted by sssd.service) refuse to start: no failed unit left behind.
            stack.callback(run, "systemctl", "reset-failed", "sssd-nss.socket", check=False)
            for uid, gid, mode in _sssd_conf_owners():
                os.chown(conf_path, uid, gid)
                os.chmod(conf_path, mode)
                started = run("systemctl", "restart", unit, timeout=120, check=False)
                if started.returncode == 0:
                    break
            assert started.returncode == 0, run("journalctl", "-u", unit, "-n", "30", "--no-pager", check=False).stdout
        else:
            run("systemctl", "restart", unit, timeout=120)
        stack.enter_context(vmlib.file_replaced(NSSWITCH, _nsswitch(source)))
        vmlib.wait_until(f"{probe_user} through {kind}",
                         lambda: run("getent", "passwd", probe_user, check=False).returncode == 0, timeout=60)
        yield handle


def sshd_says(mark, *words):
    """sshd's (or Debian 13's sshd-session's) journal line with `words`, after `mark`."""
    def find():
        return next((e for e in vmlib.journal(mark) if str(e.get("SYSLOG_IDENTIFIER", "")).startswith("sshd")
                     and all(w in str(e.get("MESSAGE")) for w in words)), None)
    return vmlib.wait_until(f"sshd's line with {words}", find, timeout=30)


def ids(user):
    """`id -G user` as a set of gids (empty if id fails)."""
    proc = run("id", "-G", user, check=False)
    return {int(g) for g in proc.stdout.split()} if proc.returncode == 0 else set()

