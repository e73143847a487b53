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

The lab machinery (users, netns, the helper's command line, sshd of its own,
cgroup removal) is testlab's, the kit the tests and benchmarks use too.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testlab.cgroups import cgroup_mount, remove_cgroup_tree  # noqa: E402
from testlab.helper import helper_argv, helper_dir, wait_helper  # noqa: E402
from testlab.net import add_netns, add_veth, remove_netns  # noqa: E402
from testlab.pam import write_pam_service  # noqa: E402
from testlab.run import REPO, nsenter, public_dir, stop_process, unlink_quietly, write_file  # noqa: E402
from testlab.sshd import Sshd  # noqa: E402
from testlab.users import add_group, add_user, remove_group, remove_user  # noqa: E402

HOST, PEER = "pvdemo-host", "pvdemo-mgmt"
USER, HELPER_USER = "pvdemo-op", "pvdemo-helper"
SERVICE = "sshd-pvdemo"
PAM_FILE = f"/etc/pam.d/{SERVICE}"
PORT = 2222


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
    return nsenter(HOST, argv)


class Demo:
    def __init__(self):
        self.dir = public_dir("pam-vrf-demo-")
        self.procs = []
        self.sshd_lab = None
        self.installed_here = False
        mount = cgroup_mount()
        if not mount:
            raise SystemExit("demo: no cgroup2 file system mounted")
        self.cgroup = os.path.join(mount, "pvdemo")

    # -- set-up -------------------------------------------------------------

    def install(self):
        if not os.path.exists("/usr/lib/pam-vrf/pam_vrf.py"):
            step("Installing pam-vrf (make install)")
            run("make", "-C", REPO, "install", quiet=True)
            self.installed_here = True

    def network(self):
        step("Network: namespaces, target, management peer")
        for ns in (HOST, PEER):
            add_netns(ns)
        add_veth(HOST, "eth-mgmt", "eth0", up=False, peer_netns=PEER)
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
        add_group("pvdemo-netops")
        add_user(USER, groups=["pvdemo-netops"])
        self.helper_user = add_user(HELPER_USER, shell="/usr/sbin/nologin")
        self.config = write_file(os.path.join(self.dir, "vrf.conf"),
                                         f"# demo policy\n@pvdemo-netops  {self.target}  {self.plain}\n*  -\n")
        print(textwrap.indent(open(self.config).read().rstrip(), "    "))
        run("/usr/local/bin/pam-vrf", "check", "--config", self.config)

    def helper(self):
        step(f"Helper: pam-vrf-helper as {HELPER_USER} with ambient CAP_BPF,CAP_NET_ADMIN,CAP_DAC_OVERRIDE")
        rundir = helper_dir(self.dir, self.helper_user, "run")
        self.socket = os.path.join(rundir, "helper.sock")
        self.helper_log = open(os.path.join(self.dir, "helper.log"), "w")
        proc = subprocess.Popen(helper_argv(self.helper_user, self.socket, self.config, HOST),
                                stdout=self.helper_log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        try:
            wait_helper(self.socket, proc, lambda: open(self.helper_log.name).read())
        except AssertionError as e:
            raise SystemExit(f"demo: {e}") from None
        time.sleep(0.3)
        print(textwrap.indent(open(self.helper_log.name).read().rstrip(), "    "))

    def sshd(self):
        step(f"sshd on 127.0.0.1:{PORT} with PAM service {SERVICE} (the installed pam_vrf.so after pam_permit)")
        write_pam_service(SERVICE, "session  [success=ok session_err=bad default=ignore]  pam_vrf.so "
                                           f"config={self.config} socket={self.socket}",
                                  comment="pam-vrf demo (removed when the demo ends)")
        print(textwrap.indent(open(PAM_FILE).read().rstrip(), "    "))
        self.sshd_lab = Sshd(self.dir, SERVICE, PORT, netns=HOST)   # PAM service name = program name
        self.sshd_lab.authorize(USER)
        os.makedirs(self.cgroup, exist_ok=True)
        try:
            self.sshd_lab.start(cgroup_dir=self.cgroup)
        except AssertionError as e:
            raise SystemExit(f"demo: sshd did not come up: {e}") from None

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
        proc = run(*self.sshd_lab.ssh_argv(USER, command))
        step("pam-vrf status (from the host namespace side)")
        run(*in_host("/usr/local/bin/pam-vrf", "status"))
        ok = f"bound to: {self.target}" in proc.stdout and "hello from the management network" in proc.stdout
        step("Result: " + ("the login landed in the VRF" if ok else "NOT placed - see above"))
        return ok

    # -- tear-down --------------------------------------------------------------

    def cleanup(self):
        step("Cleaning up")
        if self.sshd_lab:
            self.sshd_lab.stop()
        for proc in reversed(self.procs):
            stop_process(proc)
        remove_cgroup_tree(self.cgroup)
        for ns in (HOST, PEER):
            remove_netns(ns)
        for user in (USER, HELPER_USER):
            remove_user(user)
        remove_group("pvdemo-netops")
        unlink_quietly(PAM_FILE)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.installed_here:
            run("make", "-C", REPO, "uninstall", check=False, quiet=True)
        print("    sandbox removed")


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
