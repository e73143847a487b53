"""An sshd of the lab's own: config, host and user keys, a PAM service named
after it, a port in a netns."""

import os
import shutil
import subprocess
import textwrap

from testlab.run import enter, nsenter, sh, wait_until, write_file


class Sshd:
    """sshd under the program (and so PAM) name `service` (a symlink to
    /usr/sbin/sshd in `dir`), listening on 127.0.0.1:`port` inside `netns`,
    with a host key of its own and one user key: user(name) authorises it
    for that user. Its PAM stack, /etc/pam.d/SERVICE, is the caller's."""

    def __init__(self, dir, service, port, netns=None, extra_config=""):
        self.dir, self.service, self.port, self.netns = dir, service, port, netns
        self.proc = None
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)      # sshd's privilege separation dir
        for key in ("hostkey", "userkey"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{dir}/{key}")
        os.makedirs(f"{dir}/keys")
        os.chmod(f"{dir}/keys", 0o755)
        write_file(f"{dir}/sshd_config", textwrap.dedent(f"""\
            ListenAddress 127.0.0.1:{port}
            HostKey {dir}/hostkey
            PidFile none
            UsePAM yes
            AuthorizedKeysFile {dir}/keys/%u
            StrictModes no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            PermitRootLogin no
            MaxStartups 100
            LogLevel VERBOSE
        """) + extra_config)
        os.symlink("/usr/sbin/sshd", f"{dir}/{service}")
        self.log_path = f"{dir}/sshd.log"

    def authorize(self, name):
        shutil.copy(f"{self.dir}/userkey.pub", f"{self.dir}/keys/{name}")
        os.chmod(f"{self.dir}/keys/{name}", 0o644)

    def start(self, cgroup_dir=None, wrap=lambda argv: argv, timeout=10):
        argv = wrap(nsenter(self.netns, [f"{self.dir}/{self.service}", "-D", "-e", "-f", f"{self.dir}/sshd_config"]))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, preexec_fn=enter(cgroup_dir), stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited with {self.proc.returncode}:\n{self.output()}")
            return "Server listening" in self.output()
        try:
            wait_until("sshd to listen", listening, timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None
        return self

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def ssh_argv(self, name, command):
        return nsenter(self.netns, [
            "ssh", "-F", "/dev/null", "-i", f"{self.dir}/userkey", "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{name}@127.0.0.1", command])

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None
            self.log.close()
