#!/usr/bin/python3
"""pam-vrf demo: an ssh login that lands in a VRF, in a sandbox that is
removed again afterwards. Run as root: `sudo make demo`.

Sandbox:
    netns pvdemo-host   a VRF `mgmt` (or, on kernels without the VRF
                        driver, a veth used as a `plain` target), sshd on
                        127.0.0.1:2222 with the installed pam_vrf.so in its stack,
                        pam-vrf-helper as an unprivileged user
    netns pvdemo-mgmt   the "management network" behind the target,
                        answering on 192.0.2.2:7000
Nothing outside these namespaces is changed except: throwaway users
pvdemo-op and pvdemo-helper, /etc/pam.d/sshd-pvdemo, a cgroup
<cgroup2>/pvdemo, all removed at the end (and pam-vrf itself, if the
demo had to install it).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HOST, PEER = "pvdemo-host", "pvdemo-mgmt"
USER, HELPER_USER = "pvdemo-op", "pvdemo-helper"
SERVICE = "sshd-pvdemo"
PAM_FILE = f"/etc/pam.d/{SERVICE}"
PORT = 2222
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(text):
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def run(*argv, check=True, quiet=False):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(map(str, argv))} failed:\n{proc.stdout}{proc.stderr}")
    if not quiet and proc.stdout.strip():
        print(textwrap.indent(proc.stdout.rstrip(), "    "))
    return proc


def in_host(*argv):
    # nsenter, not `ip netns exec`: that would also remount /sys and hide the cgroup2 mount.
    return ["nsenter", f"--net=/run/netns/{HOST}", *argv]


class Demo:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pam-vrf-demo-")
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.installed_here = False
        from_mount = [line.split()[4] for line in open("/proc/self/mountinfo") if " - cgroup2 " in line]
        if not from_mount:
            raise SystemExit("demo: no cgroup2 file system mounted")
        self.cgroup = os.path.join(from_mount[0], "pvdemo")

    # -- set-up -------------------------------------------------------------

    def install(self):
        if not os.path.exists("/usr/lib/pam-vrf/pam_vrf.py"):
            step("Installing pam-vrf (make install)")
            run("make", "-C", REPO, "install", quiet=True)
            self.installed_here = True

    def network(self):
        step("Network: namespaces, target, management peer")
        for ns in (HOST, PEER):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", HOST, "link", "add", "eth-mgmt", "type", "veth", "peer", "name", "eth0", "netns", PEER)
        run("ip", "-n", PEER, "addr", "add", "192.0.2.2/24", "dev", "eth0")
        run("ip", "-n", PEER, "link", "set", "eth0", "up")
        has_vrf = run("ip", "-n", HOST, "link", "add", "mgmt", "type", "vrf", "table", "10", check=False).returncode == 0
        if has_vrf:
            self.target, self.plain = "mgmt", ""
            run("ip", "-n", HOST, "link", "set", "mgmt", "up")
            run("ip", "-n", HOST, "link", "set", "eth-mgmt", "master", "mgmt")
            print("    this kernel has the VRF driver: target is VRF 'mgmt' (table 10), eth-mgmt enslaved to it")
        else:
            self.target, self.plain = "eth-mgmt", "plain"
            print("    this kernel has no VRF driver: target is the veth 'eth-mgmt' as a `plain` target")
        run("ip", "-n", HOST, "addr", "add", "192.0.2.1/24", "dev", "eth-mgmt")
        run("ip", "-n", HOST, "link", "set", "eth-mgmt", "up")
        server = textwrap.dedent("""
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("192.0.2.2", 7000)); s.listen(8)
            while True:
                c, a = s.accept(); c.sendall(b"hello from the management network"); c.close()
        """)
        self.procs.append(subprocess.Popen(["nsenter", f"--net=/run/netns/{PEER}", "/usr/bin/python3", "-c", server]))

    def users_and_policy(self):
        step(f"Users: {USER} (group pvdemo-netops), {HELPER_USER} (runs the helper)")
        run("groupadd", "--system", "pvdemo-netops")
        run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh",
            "--groups", "pvdemo-netops", USER)
        run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", HELPER_USER)
        self.config = os.path.join(self.dir, "vrf.conf")
        with open(self.config, "w") as f:
            f.write(f"# demo policy\n@pvdemo-netops  {self.target}  {self.plain}\n*  -\n")
        os.chmod(self.config, 0o644)
        print(textwrap.indent(open(self.config).read().rstrip(), "    "))
        run("/usr/local/bin/pam-vrf", "check", "--config", self.config)

    def helper(self):
        step(f"Helper: pam-vrf-helper as {HELPER_USER} with ambient CAP_BPF,CAP_NET_ADMIN,CAP_DAC_OVERRIDE")
        rundir = os.path.join(self.dir, "run")
        os.mkdir(rundir)
        shutil.chown(rundir, HELPER_USER, HELPER_USER)
        self.socket = os.path.join(rundir, "helper.sock")
        caps = "+bpf,+net_admin,+dac_override"
        self.helper_log = open(os.path.join(self.dir, "helper.log"), "w")
        self.procs.append(subprocess.Popen(in_host(
            "setpriv", "--reuid", HELPER_USER, "--regid", HELPER_USER, "--init-groups",
            "--inh-caps", caps, "--ambient-caps", caps,
            "/usr/local/sbin/pam-vrf-helper", "--socket", self.socket, "--config", self.config),
            stdout=self.helper_log, stderr=subprocess.STDOUT))
        self._wait(lambda: os.path.exists(self.socket), "helper socket")
        time.sleep(0.3)
        print(textwrap.indent(open(self.helper_log.name).read().rstrip(), "    "))

    def sshd(self):
        step(f"sshd on 127.0.0.1:{PORT} with PAM service {SERVICE} (the installed pam_vrf.so after pam_permit)")
        with open(PAM_FILE, "w") as f:
            f.write(textwrap.dedent(f"""\
                # pam-vrf demo (removed when the demo ends)
                auth     required  pam_permit.so
                account  required  pam_permit.so
                session  required  pam_permit.so
                session  [success=ok session_err=bad default=ignore]  pam_vrf.so config={self.config} socket={self.socket}
            """))
        print(textwrap.indent(open(PAM_FILE).read().rstrip(), "    "))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for key in ("hostkey", "userkey"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/{key}")
        shutil.copy(f"{self.dir}/userkey.pub", f"{self.dir}/authorized_keys")
        os.chmod(f"{self.dir}/authorized_keys", 0o644)
        with open(f"{self.dir}/sshd_config", "w") as f:
            f.write(textwrap.dedent(f"""\
                ListenAddress 127.0.0.1:{PORT}
                HostKey {self.dir}/hostkey
                PidFile none
                UsePAM yes
                AuthorizedKeysFile {self.dir}/authorized_keys
                StrictModes no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
            """))
        os.symlink("/usr/sbin/sshd", f"{self.dir}/{SERVICE}")      # PAM service name = program name
        os.makedirs(self.cgroup, exist_ok=True)
        self.sshd_log = open(os.path.join(self.dir, "sshd.log"), "w")

        def into_cgroup():
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        self.procs.append(subprocess.Popen(in_host(f"{self.dir}/{SERVICE}", "-D", "-e", "-f", f"{self.dir}/sshd_config"),
                                           stdout=self.sshd_log, stderr=subprocess.STDOUT, preexec_fn=into_cgroup))
        self._wait(lambda: "Server listening" in open(self.sshd_log.name).read(), "sshd")

    # -- the login ------------------------------------------------------------

    def login(self):
        step(f"ssh {USER}@127.0.0.1 -- what does the session see?")
        probe = os.path.join(self.dir, "probe.py")
        with open(probe, "w") as f:
            f.write(textwrap.dedent("""
                import socket
                s = socket.socket()
                dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(bytes(1)).decode()
                print("new TCP socket bound to:", dev or "(nothing)")
                s.settimeout(3)
                s.connect(("192.0.2.2", 7000))
                print("192.0.2.2:7000 says:", s.recv(100).decode())
            """))
        os.chmod(probe, 0o644)
        command = ("echo \"ip vrf identify \\$\\$: $(ip vrf identify $$)\"; "
                   "echo \"cgroup: $(cut -d: -f3- /proc/self/cgroup | tail -n1)\"; "
                   f"/usr/bin/python3 {probe}")
        proc = run(*in_host("ssh", "-F", "/dev/null", "-i", f"{self.dir}/userkey", "-p", PORT,
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{USER}@127.0.0.1", command))
        step("pam-vrf status (from the host namespace side)")
        run(*in_host("/usr/local/bin/pam-vrf", "status"))
        ok = f"bound to: {self.target}" in proc.stdout and "hello from the management network" in proc.stdout
        step("Result: " + ("the login landed in the VRF" if ok else "NOT placed - see above"))
        return ok

    # -- tear-down --------------------------------------------------------------

    def cleanup(self):
        step("Cleaning up")
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.path.isdir(self.cgroup):
            for here, dirs, _ in sorted(os.walk(self.cgroup), key=lambda w: -w[0].count("/")):
                for pid in open(os.path.join(here, "cgroup.procs")).read().split():
                    run("kill", "-9", pid, check=False, quiet=True)
            time.sleep(0.2)
            for here, dirs, _ in sorted(os.walk(self.cgroup), key=lambda w: -w[0].count("/")):
                run("rmdir", here, check=False, quiet=True)
        for ns in (HOST, PEER):
            run("ip", "netns", "del", ns, check=False, quiet=True)
        for user in (USER, HELPER_USER):
            run("userdel", "-f", user, check=False, quiet=True)
            run("groupdel", user, check=False, quiet=True)
        run("groupdel", "pvdemo-netops", check=False, quiet=True)
        if os.path.exists(PAM_FILE):
            os.unlink(PAM_FILE)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.installed_here:
            run("make", "-C", REPO, "uninstall", check=False, quiet=True)
        print("    sandbox removed")

    def _wait(self, ready, what, timeout=15):
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {what} did not come up")
            time.sleep(0.05)


def main():
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (sudo make demo)")
    leftovers = [ns for ns in (HOST, PEER) if os.path.exists(f"/run/netns/{ns}")]
    if leftovers or os.path.exists(PAM_FILE):
        raise SystemExit(f"demo: a previous demo's sandbox is still there ({leftovers or PAM_FILE}); "
                         "remove it or wait for it to finish")
    demo = Demo()
    try:
        demo.install()
        demo.network()
        demo.users_and_policy()
        demo.helper()
        demo.sshd()
        ok = demo.login()
    finally:
        demo.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
