#!/bin/bash
# Provision a Debian 12 machine as a pam-vrf test box. Runs as root, is
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
#   - `make -C REPO install` (pam-vrf itself)
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
#   - the pam-vrf session line in /etc/pam.d/sshd, after pam_systemd, with the
#     control values the product recommends (a strict refusal is honoured)
#   - the pam-vrf helper units (socket and service) enabled, and started
#   - /etc/pam-vrf-test-vm, the marker that lets tests/vm run
#
# Every step runs even if an earlier one failed; the summary at the end lists
# the failed steps and the exit status is 1 if there was any.

set -u

# Runtime packages (the CI image adds the kernel/boot ones itself).
# (bpftool: tests/vm counts loaded and attached BPF programs with it.)
PACKAGES="iproute2 openssh-server openssh-client libpam-python libpam-systemd pamtester
python3 python3-pytest python3-pyroute2 kmod make procps iputils-ping netbase bpftool"

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

# --- pam-vrf itself -----------------------------------------------------
log "make -C $REPO install"
if [ -f "$REPO/Makefile" ]; then
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
# systemd-networkd is part of systemd, i.e. of every Debian 12 base system:
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

# --- PAM: sshd ---------------------------------------------------------------
# pam_systemd moves the login into session-N.scope and would undo a placement
# made before it; in Debian it comes into sshd's stack via @include
# common-session. The hook goes at the end, i.e. after it; check that it is.
# Control values as the product recommends (README, pam.d/sshd.example): only
# a strict refusal (PAM_SESSION_ERR) fails the stack, so `strict` is honoured.
log "/etc/pam.d/sshd"
PAM_LINE="session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py"
SSHD_PAM=/etc/pam.d/sshd
if [ ! -f $SSHD_PAM ]; then
    fail "$SSHD_PAM does not exist (openssh-server)"
else
    # Where does pam_systemd come in? (directly, or via one level of @include)
    systemd_at=$(awk -v dir=/etc/pam.d '
        /^[[:space:]]*#/ { next }
        $1 == "session" && /pam_systemd\.so/ { line = NR }
        $1 == "@include" {
            f = dir "/" $2
            while ((getline l < f) > 0)
                if (l !~ /^[[:space:]]*#/ && l ~ /^[[:space:]]*session/ && l ~ /pam_systemd\.so/) line = NR
            close(f)
        }
        END { print line + 0 }' $SSHD_PAM)
    hook_at=$(grep -n '^[^#]*pam_vrf\.py' $SSHD_PAM | head -1 | cut -d: -f1)
    if [ "$systemd_at" = 0 ]; then
        fail "$SSHD_PAM: pam_systemd is not in the session stack (libpam-systemd / pam-auth-update)"
    elif grep -qxF "$PAM_LINE" $SSHD_PAM && [ "$(grep -c 'pam_vrf\.py' $SSHD_PAM)" = 1 ] \
            && [ "${hook_at:-0}" -gt "$systemd_at" ]; then
        echo "has the pam-vrf line already (line $hook_at; pam_systemd at line $systemd_at)"
    else
        # Replace an older pam-vrf line (e.g. `session optional ...`) with ours, at the end.
        sed -i -e '/^# pam-vrf: place the session/d' -e '/pam_vrf\.py/d' $SSHD_PAM
        sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' $SSHD_PAM      # and the blank lines left at the end
        printf '\n# pam-vrf: place the session in its VRF; must come after pam_systemd (vagrant/provision.sh)\n%s\n' \
            "$PAM_LINE" >>$SSHD_PAM
        echo "appended to $SSHD_PAM (pam_systemd is brought in at line $systemd_at)"
    fi
fi

# --- the helper -----------------------------------------------------------------
# Both units: the socket (logins reach the helper even while it restarts) and
# the service (running from boot rather than started by the first login, which
# waits at most 1 s for the helper's answer).
log "pam-vrf helper units"
HELPER_UNITS="pam-vrf-helper.socket pam-vrf-helper.service"
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
