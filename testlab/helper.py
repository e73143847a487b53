"""pam-vrf-helper as in production: a non-root user holding the ambient
capabilities only, optionally in a netns; its socket directory; waiting for
its first answer; Helper, one such daemon with its log."""

import os
import subprocess
import tempfile

from testlab.run import nsenter, stop_process, wait_until

HELPER_BIN = "/usr/local/sbin/pam-vrf-helper"
HELPER_CAPS = "+bpf,+net_admin,+dac_override"


def helper_argv(user, socket_path, config, netns=None, debug=False, program=(HELPER_BIN,)):
    """pam-vrf-helper as in production: `user` (a pwd entry) holding the
    ambient capabilities only, optionally inside the named netns."""
    argv = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups",
            "--inh-caps", HELPER_CAPS, "--ambient-caps", HELPER_CAPS,
            *program, "--socket", socket_path, "--config", config, *(["--debug"] if debug else [])]
    return nsenter(netns, argv)


def helper_dir(parent_or_none, user, name=None):
    """A directory for the helper's sockets, owned by its user, 0755."""
    path = os.path.join(parent_or_none, name) if name else tempfile.mkdtemp(prefix="pam-vrf-helper-")
    if name:
        os.mkdir(path)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o755)
    return path


def wait_helper(socket_path, proc, output=lambda: "", timeout=15):
    """Until the helper answers a ping on `socket_path`; fails if `proc` exits first."""
    from pam_vrf import client

    def up():
        try:
            client.call({"op": "ping"}, socket_path)
            return True
        except client.HelperError:
            if proc.poll() is not None:
                raise AssertionError(f"helper did not start (exit {proc.returncode}):\n{output()}")
            return False
    try:
        wait_until("the helper to answer", up, timeout=timeout)
    except AssertionError as e:
        if "helper did not start" in str(e):
            raise
        raise AssertionError(f"helper did not start:\n{output()}") from None


class Helper:
    """pam-vrf-helper as in production: a non-root user with ambient caps only,
    its output in WORKDIR/helper.log, its syslog to `syslog` (a SyslogSink)."""

    CAPS = HELPER_CAPS

    def __init__(self, user, workdir, config, netns=None, syslog=None):
        self.user, self.workdir, self.config, self.netns, self.syslog = user, workdir, config, netns, syslog
        self.socket = os.path.join(workdir, "helper.sock")
        self.root_socket = os.path.join(workdir, "root.sock")
        self.proc = None

    def argv(self):
        argv = helper_argv(self.user, self.socket, self.config, self.netns, debug=True)
        return self.syslog.wrap(argv) if self.syslog else argv

    def start(self):
        self.log = open(os.path.join(self.workdir, "helper.log"), "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        wait_helper(self.socket, self.proc, self.output)
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        with open(os.path.join(self.workdir, "helper.log"), "rb") as f:
            return f.read().decode(errors="replace")
