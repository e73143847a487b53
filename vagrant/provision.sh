#!/bin/bash
# Provision a Debian 12 (bookworm) or 13 (trixie) machine as a pam-vrf test
# box: the same package names on both. Runs as root, is
# idempotent, and is shared by:
#   - the Vagrantfile (vagrant up / vagrant provision), in a booted box, and
#   - vagrant/ci/test-vm, inside a chroot of the CI disk image (not booted:
#     runtime steps such as starting units are skipped, enabling still works).
#
# Usage: provision.sh [REPO]          (REPO defaults to this script's ../)
#        provision.sh --print-packages (the Debian packages it needs; used by
#                                      vagrant/ci/test-vm for debootstrap)
#
# What it sets up (see vagrant/README.md):
#   - the plain resolver set-up (systemd-resolved disabled, a plain
#     /etc/resolv.conf, nsswitch hosts without resolve): the packages for
#     tests/vm/test_vm_names.py would otherwise switch resolved on
#   - pam-vrf itself: its Debian package where one was put into
#     /var/cache/pam-vrf-test (the CI image: vagrant/ci/test-vm builds it with
#     `make deb`), else `make -C REPO install` (a Vagrant box)
#   - the `vrf` module loaded at boot (modules-load.d)
#   - a persistent management VRF `mgmt` (table 10) with systemd-networkd
#   - a lab: veth-mgmt (in VRF mgmt) and veth-prod (default VRF), both
#     10.99.0.1/24 + fd00:99::1/64; their far ends sit in the namespaces
#     mgmt-peer and prod-peer and both answer 10.99.0.2 / fd00:99::2, so
#     *which* peer answers proves which VRF a socket used
#   - sshd (default VRF) reachable through the VRF too (tcp_l3mdev_accept=1)
#   - group netops, user op1 in it, user op2 not in it; /etc/security/vrf.conf:
#     `@netops mgmt`
#   - a test ssh key (/etc/pam-vrf-test/id_ed25519) that logs in as op1, op2
#     and root; an sshd drop-in for many logins in a row
#   - the pam-auth-update profile `pam-vrf` enabled: pam_vrf.so in
#     common-session (after pam_systemd) and common-session-noninteractive,
#     so sshd, su, cron and atd sessions are placed; checked per service
#   - the pam-vrf helper units (both sockets and the service) enabled, and started
#   - /etc/pam-vrf-test-vm, the marker that lets tests/vm run
#
# Every step runs even if an earlier one failed; the summary at the end lists
# the failed steps and the exit status is 1 if there was any.

set -u

# Runtime packages (the CI image adds the kernel/boot ones itself).
# (slapd ldap-utils sssd-ldap libnss-sss libnss-ldapd nslcd: directory
# accounts, tests/vm/test_vm_directory.py, which starts them itself; here
# they are installed, switched off and kept out of nsswitch.conf and PAM;
# bpftool: tests/vm counts loaded and attached BPF programs with it;
# gcc libc6-dev libpam0g-dev: `make install` builds the C module pam_vrf.so;
# cron, at: the VM tests check that their sessions are placed too;
# adduser: the package's postinst makes the helper's user with it;
# python3-bpfcc: pam-vrf trace and the C/bcc program equivalence test;
# dnsmasq-base apt-utils curl systemd-resolved libnss-resolve: names and apt
# from a placed session (a DNS server and an apt repository behind the mgmt
# peer; both resolver set-ups a Debian host has).)
PACKAGES="iproute2 openssh-server openssh-client libpam-python libpam-systemd pamtester
python3 python3-pytest python3-pyroute2 kmod make procps iputils-ping netbase bpftool
gcc libc6-dev libpam0g-dev cron at adduser python3-bpfcc
dnsmasq-base apt-utils curl systemd-resolved libnss-resolve
slapd ldap-utils sssd-ldap libnss-sss libnss-ldapd nslcd"

if [ "${1:-}" = "--print-packages" ]; then
    echo $PACKAGES
    exit 0
fi

REPO=$(cd "${1:-${PAM_VRF_REPO:-$(dirname "$0")/..}}" && pwd) || { echo "provision: no repo" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "provision: run as root" >&2; exit 2; }

VRF=mgmt
VRF_TABLE=10
FAILED=()

# Booted with systemd (vagrant box) or a chroot of an image (CI build)?
if [ -d /run/systemd/system ]; then BOOTED=1; else BOOTED=0; fi

log() { printf '\n=== provision: %s\n' "$*"; }
fail() { echo "provision: FAILED: $*" >&2; FAILED+=("$*"); }

write_file() {   # write_file PATH MODE < content; only touches PATH if it changes
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 0
    fi
    mkdir -p "$(dirname "$path")"
    install -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
    echo "wrote $path"
}

# --- packages -----------------------------------------------------------
log "packages"
missing=()
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } \
        || fail "apt-get install ${missing[*]}"
else
    echo "all present"
fi

# --- name resolution: the plain set-up by default ------------------------------
# systemd-resolved and libnss-resolve are here for tests/vm/test_vm_names.py,
# which switches them on for itself (and back off). Installing them enables
# resolved, turns /etc/resolv.conf into a symlink to its stub (the package
# keeps the plain file as /etc/.resolv.conf.systemd-resolved.bak) and puts
# `resolve [!UNAVAIL=return]` on the hosts line of nsswitch.conf. Undo all
# three: the other tests (IP addresses only) and a Vagrant box's own DNS
# keep the plain set-up, glibc's dns module reading /etc/resolv.conf.
log "resolver: plain /etc/resolv.conf, systemd-resolved disabled, nsswitch without resolve"
if [ -f /lib/systemd/system/systemd-resolved.service ]; then
    systemctl disable systemd-resolved.service || fail "systemctl disable systemd-resolved"
    if [ $BOOTED = 1 ]; then
        systemctl stop systemd-resolved.service || fail "systemctl stop systemd-resolved"
    fi
fi
case "$(readlink /etc/resolv.conf 2>/dev/null)" in
*/run/systemd/resolve/*)
    rm -f /etc/resolv.conf
    if [ -f /etc/.resolv.conf.systemd-resolved.bak ]; then
        mv /etc/.resolv.conf.systemd-resolved.bak /etc/resolv.conf
        echo "restored the plain /etc/resolv.conf the systemd-resolved package had put aside"
    else
        printf '# pam-vrf test box (vagrant/provision.sh): no DNS server; tests/vm sets up its own\n' \
            >/etc/resolv.conf
        echo "wrote a plain /etc/resolv.conf (no server)"
    fi
    ;;
esac
if grep -qE '^hosts:.*[[:space:]]resolve([[:space:]]|$)' /etc/nsswitch.conf 2>/dev/null; then
    sed -i -E '/^hosts:/s/[[:space:]]+resolve([[:space:]]+\[[^]]*\])?//' /etc/nsswitch.conf \
        || fail "nsswitch.conf: drop resolve"
    echo "nsswitch.conf: $(grep '^hosts:' /etc/nsswitch.conf)"
fi

# --- directory services: installed, off ----------------------------------------
# tests/vm/test_vm_directory.py runs its own slapd (loopback only) and turns
# SSSD or nslcd on for itself. Until then no login may depend on them: their
# units are off, nsswitch.conf names only files/systemd, and libpam-sss's
# pam-auth-update profile (pam_sss in every stack) is not enabled.
log "directory services: slapd, sssd, nslcd off; nsswitch and PAM without sss/ldap"
for unit in slapd.service sssd.service nslcd.service; do
    if systemctl cat "$unit" >/dev/null 2>&1 || [ -f "/lib/systemd/system/$unit" ] || [ -f "/etc/init.d/${unit%.service}" ]; then
        systemctl disable "$unit" 2>/dev/null || fail "systemctl disable $unit"
        if [ $BOOTED = 1 ]; then systemctl stop "$unit" || true; fi
    fi
done
if grep -qE '^[a-z]+:.*[[:space:]](sss|ldap)([[:space:]]|$)' /etc/nsswitch.conf 2>/dev/null; then
    sed -i -E -e '/^[a-z]+:/{:a' -e 's/[[:space:]]+(sss|ldap)([[:space:]]+\[[^]]*\])?([[:space:]]|$)/\3/; ta' -e '}' /etc/nsswitch.conf \
        || fail "nsswitch.conf: drop sss/ldap"
    echo "nsswitch.conf without sss/ldap: $(grep -E '^(passwd|group):' /etc/nsswitch.conf | tr '\n' ' ')"
fi
# --disable (not --remove): it stays off when pam-auth-update runs again.
if [ -f /usr/share/pam-configs/sss ] && grep -q 'pam_sss\.so' /etc/pam.d/common-* 2>/dev/null; then
    pam-auth-update --disable sss || fail "pam-auth-update --disable sss"
fi

# --- pam-vrf itself -----------------------------------------------------
DEB=$(ls -1 /var/cache/pam-vrf-test/pam-vrf_*.deb 2>/dev/null | tail -n 1)
if [ -n "$DEB" ]; then
    # Its dependencies are in PACKAGES: nothing to download.
    log "pam-vrf from its Debian package: $DEB"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$DEB" \
        || fail "apt-get install $DEB"
elif [ -f "$REPO/Makefile" ]; then
    log "make -C $REPO install"
    make -C "$REPO" install || fail "make install (exit $?)"
else
    fail "make install: $REPO/Makefile does not exist"
fi

# --- the vrf module at boot ---------------------------------------------
log "vrf module"
echo vrf | write_file /etc/modules-load.d/pam-vrf.conf 0644
if [ $BOOTED = 1 ]; then
    modprobe vrf || fail "modprobe vrf"
fi

# --- VRF mgmt and the lab links: systemd-networkd -------------------------
# systemd-networkd is part of systemd, i.e. of every Debian 12 and 13 base system:
# a VRF made this way needs no extra package (no ifupdown2), survives reboots,
# and is what an operator would write. It only manages the links named in
# these files, so a box that brings its NIC up with ifupdown keeps doing so.
log "VRF $VRF (table $VRF_TABLE) with systemd-networkd"
write_file /etc/systemd/network/50-$VRF.netdev 0644 <<EOF
# pam-vrf test box: the management VRF (vagrant/provision.sh)
[NetDev]
Name=$VRF
Kind=vrf

[VRF]
Table=$VRF_TABLE
EOF
write_file /etc/systemd/network/50-$VRF.network 0644 <<EOF
# pam-vrf test box: bring the VRF device up (vagrant/provision.sh)
[Match]
Name=$VRF

[Network]
LinkLocalAddressing=no

# Every VRF table ends in an unreachable default (the kernel's vrf.rst): a
# lookup the table misses must not go on to the main table and send through
# a default-VRF link (pam-vrf doctor, check routes: an error without them).
[Route]
Type=unreachable
Destination=0.0.0.0/0
Table=$VRF_TABLE
Metric=4278198272

[Route]
Type=unreachable
Destination=::/0
Table=$VRF_TABLE
Metric=4278198272

[Link]
RequiredForOnline=no
EOF
for side in mgmt prod; do
    if [ $side = mgmt ]; then vrf_line="VRF=$VRF"; where="VRF $VRF"; else vrf_line=""; where="the default VRF"; fi
    write_file /etc/systemd/network/50-veth-$side.network 0644 <<EOF
# pam-vrf test box: the $side side of the lab, in $where (vagrant/provision.sh).
# The link itself and its far end (namespace $side-peer) come from pam-vrf-lab.service.
[Match]
Name=veth-$side

[Network]
$vrf_line
Address=10.99.0.1/24
Address=fd00:99::1/64
LinkLocalAddressing=ipv6
IPv6AcceptRA=no
IPv6DuplicateAddressDetection=0
EOF
done

# Services in the default VRF (sshd) also answer connections that arrive
# through a VRF: what makes the box reachable over its management LAN.
write_file /etc/sysctl.d/60-pam-vrf.conf 0644 <<EOF
# pam-vrf test box (vagrant/provision.sh): sockets of the default VRF (sshd)
# accept connections arriving through a VRF (the management LAN).
net.ipv4.tcp_l3mdev_accept = 1
net.ipv4.udp_l3mdev_accept = 1
EOF
if [ $BOOTED = 1 ]; then
    sysctl -q -p /etc/sysctl.d/60-pam-vrf.conf || fail "sysctl l3mdev_accept"
fi

# The lab peers: a namespace per side holding the far end of the veth.
write_file /usr/local/sbin/pam-vrf-lab 0755 <<'EOF'
#!/bin/bash
# pam-vrf test box lab (vagrant/provision.sh): namespaces mgmt-peer and
# prod-peer, each holding eth0 = far end of veth-mgmt / veth-prod, both
# answering 10.99.0.2 and fd00:99::2. systemd-networkd configures the near ends.
set -eu
case "${1:-}" in
up)
    for side in mgmt prod; do
        ns=$side-peer
        [ -e /run/netns/$ns ] || ip netns add $ns
        ip -n $ns link set lo up
        if ! ip link show veth-$side >/dev/null 2>&1; then
            ip link add veth-$side type veth peer name eth0 netns $ns
        fi
        ip -n $ns addr replace 10.99.0.2/24 dev eth0
        ip -n $ns addr replace fd00:99::2/64 dev eth0 nodad
        ip -n $ns link set eth0 up
        ip link set veth-$side up
    done
    ;;
down)
    for side in mgmt prod; do
        ip link del veth-$side 2>/dev/null || true
        ip netns del $side-peer 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
EOF
write_file /etc/systemd/system/pam-vrf-lab.service 0644 <<'EOF'
# pam-vrf test box lab (vagrant/provision.sh)
[Unit]
Description=pam-vrf lab: peer namespaces mgmt-peer and prod-peer on veth links
After=systemd-modules-load.service
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pam-vrf-lab up
ExecStop=/usr/local/sbin/pam-vrf-lab down

[Install]
WantedBy=multi-user.target
EOF
systemctl enable systemd-networkd.service pam-vrf-lab.service || fail "systemctl enable systemd-networkd pam-vrf-lab"
if [ $BOOTED = 1 ]; then
    systemctl daemon-reload
    systemctl start pam-vrf-lab.service || fail "start pam-vrf-lab"
    if systemctl is-active -q systemd-networkd.service; then
        networkctl reload || fail "networkctl reload"
    else
        systemctl start systemd-networkd.service || fail "start systemd-networkd"
    fi
fi

# --- users ------------------------------------------------------------------
# op1: a netops member (placed in mgmt); op2: an ordinary user (not placed).
log "group netops, users op1 (netops) and op2"
getent group netops >/dev/null || groupadd netops || fail "groupadd netops"
if ! getent passwd op1 >/dev/null; then
    useradd --create-home --shell /bin/bash --groups netops op1 || fail "useradd op1"
else
    usermod -a -G netops op1 || fail "usermod op1"
fi
if ! getent passwd op2 >/dev/null; then
    useradd --create-home --shell /bin/bash op2 || fail "useradd op2"
fi

# --- ssh: a test key for op1, op2 and root; many logins in a row --------------
# The key is a fixture of a throwaway test machine (readable by root only):
# tests/vm logs in with it over 127.0.0.1, and adds it to users it makes.
log "test ssh key, sshd drop-in"
KEYDIR=/etc/pam-vrf-test
install -d -m 0700 $KEYDIR
if [ ! -f $KEYDIR/id_ed25519 ]; then
    ssh-keygen -q -t ed25519 -N "" -C "pam-vrf test VM" -f $KEYDIR/id_ed25519 || fail "ssh-keygen"
fi
authorize() {   # authorize USER: the test key in USER's ~/.ssh/authorized_keys
    local user=$1 home group
    home=$(getent passwd "$user" | cut -d: -f6)
    group=$(id -gn "$user")
    if [ -z "$home" ] || [ ! -d "$home" ]; then fail "authorize $user: no home directory"; return; fi
    install -d -m 0700 -o "$user" -g "$group" "$home/.ssh"
    if ! grep -qxF "$(cat $KEYDIR/id_ed25519.pub)" "$home/.ssh/authorized_keys" 2>/dev/null; then
        cat $KEYDIR/id_ed25519.pub >>"$home/.ssh/authorized_keys"
        echo "authorized the test key for $user"
    fi
    chown "$user:$group" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
}
if [ -f $KEYDIR/id_ed25519.pub ]; then
    for u in op1 op2 root; do authorize $u; done
fi
# Debian's sshd_config reads sshd_config.d/*.conf first; the first value wins.
# Root logs in with a key only (Debian's default, said here because the
# iproute2 coexistence tests log in as root).
write_file /etc/ssh/sshd_config.d/50-pam-vrf-test.conf 0644 <<EOF
# pam-vrf test box (vagrant/provision.sh): tests/vm logs in many times in a row.
PermitRootLogin prohibit-password
MaxStartups 100:30:200
LogLevel VERBOSE
EOF
if [ $BOOTED = 1 ]; then
    systemctl try-reload-or-restart ssh.service || fail "reload ssh.service"
fi

# --- policy -----------------------------------------------------------------
# make install puts a commented sample here (and never overwrites one);
# add our rule unless a rule for @netops is there already.
log "/etc/security/vrf.conf"
CONF=/etc/security/vrf.conf
if ! grep -qE '^[[:space:]]*@netops[[:space:]]' "$CONF" 2>/dev/null; then
    mkdir -p /etc/security
    printf '# pam-vrf test box (vagrant/provision.sh)\n@netops        %s\n' "$VRF" >>"$CONF"
    echo "added '@netops $VRF' to $CONF"
else
    echo "has a @netops rule already"
fi

# --- PAM: the pam-vrf profile (pam-auth-update) -----------------------------
# The product's way onto a Debian host: the pam-auth-update profile `pam-vrf`
# (make install puts it in /usr/share/pam-configs) adds pam_vrf.so to
# common-session (after pam_systemd: its priority is lower, and pam_systemd
# moves the login into session-N.scope, which would undo a placement made
# before it) and to common-session-noninteractive (cron, atd). sshd and su
# @include common-session, cron and atd common-session-noninteractive.
# Only a strict refusal (PAM_SESSION_ERR) fails a session.
log "PAM: pam-auth-update --enable pam-vrf"
PROFILE=/usr/share/pam-configs/pam-vrf
# An older provision put the pam_python entry into /etc/pam.d/sshd by hand;
# with the profile it would place sshd logins twice.
if grep -q 'pam_vrf\.py' /etc/pam.d/sshd 2>/dev/null; then
    sed -i -e '/^# pam-vrf: place the session/d' -e '/pam_vrf\.py/d' /etc/pam.d/sshd
    sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' /etc/pam.d/sshd      # and the blank lines left at the end
    echo "removed the old pam_python line from /etc/pam.d/sshd"
fi
if [ ! -f $PROFILE ]; then
    fail "$PROFILE is not installed (make install)"
elif grep -q 'pam_vrf\.so' /etc/pam.d/common-session 2>/dev/null \
        && grep -q 'pam_vrf\.so' /etc/pam.d/common-session-noninteractive 2>/dev/null; then
    echo "pam-vrf profile enabled already"
else
    pam-auth-update --enable pam-vrf || fail "pam-auth-update --enable pam-vrf"
    echo "enabled the pam-vrf profile"
fi
# Check what each PAM service we rely on ends up with: its session stack with
# one level of @include expanded (the common-* files include nothing).
session_stack() {   # session_stack SERVICE: the module names of its session lines, in order
    awk -v dir=/etc/pam.d '
        function line(l) {
            if (l ~ /^[[:space:]]*#/ || l !~ /^[[:space:]]*-?session[[:space:]]/) return
            n = split(l, w, /[[:space:]]+/)
            for (i = 1; i <= n; i++) if (w[i] ~ /\.so$/) { sub(/.*\//, "", w[i]); print w[i]; return }
        }
        /^[[:space:]]*@include[[:space:]]/ {
            f = dir "/" $2
            while ((getline l < f) > 0) line(l)
            close(f); next
        }
        { line($0) }' "/etc/pam.d/$1"
}
for svc in sshd:interactive su:interactive cron:noninteractive atd:noninteractive; do
    name=${svc%%:*} kind=${svc#*:}
    if [ ! -f /etc/pam.d/$name ]; then fail "/etc/pam.d/$name does not exist"; continue; fi
    stack=$(session_stack $name | tr '\n' ' ')
    vrf_at=$(session_stack $name | grep -n '^pam_vrf\.so$' | cut -d: -f1 | tr '\n' ' ')
    systemd_at=$(session_stack $name | grep -n '^pam_systemd\.so$' | head -1 | cut -d: -f1)
    if [ "$(echo $vrf_at | wc -w)" != 1 ] || session_stack $name | grep -q '^pam_python\.so$'; then
        fail "/etc/pam.d/$name: expected pam_vrf.so once (and no pam_python) in its session stack: $stack"
    elif [ $kind = interactive ] && { [ -z "$systemd_at" ] || [ "$vrf_at" -lt "$systemd_at" ]; }; then
        fail "/etc/pam.d/$name: pam_vrf.so must come after pam_systemd.so: $stack"
    else
        echo "/etc/pam.d/$name session stack: $stack"
    fi
done
# cron and atd run the jobs the tests schedule (their packages enable them).
systemctl enable cron.service atd.service || fail "systemctl enable cron atd"

# --- the helper -----------------------------------------------------------------
# The sockets (logins reach the helper even while it restarts): root.sock for
# the PAM entries, helper.sock for everyone (`pam-vrf exec`); and the service,
# running from boot rather than started by the first login.
log "pam-vrf helper units"
HELPER_UNITS="pam-vrf-helper.socket pam-vrf-helper-root.socket pam-vrf-helper.service"
for unit in $HELPER_UNITS; do
    found=""
    for dir in /etc/systemd/system /usr/local/lib/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
        if [ -f "$dir/$unit" ]; then found=$dir/$unit; break; fi
    done
    [ -n "$found" ] || fail "$unit is not installed (make install)"
done
# shellcheck disable=SC2086   # a word list
if systemctl enable $HELPER_UNITS; then
    echo "enabled $HELPER_UNITS"
else
    fail "systemctl enable $HELPER_UNITS"
fi
if [ $BOOTED = 1 ]; then
    systemctl daemon-reload
    # shellcheck disable=SC2086
    systemctl restart $HELPER_UNITS || fail "systemctl restart $HELPER_UNITS"
    for unit in $HELPER_UNITS; do
        systemctl is-active -q "$unit" || fail "$unit is not active"
    done
fi

# --- done ---------------------------------------------------------------------
write_file /etc/pam-vrf-test-vm 0644 <<EOF
# This machine was provisioned by vagrant/provision.sh as a pam-vrf test VM;
# tests/vm runs only where this file exists.
repo=$REPO
EOF

log "summary"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'provision: FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "provision: OK"
