# pam-vrf — install, test, demo. Run as root (sudo make ...).
#
#   make             build the C PAM module pam_module/pam_vrf.so
#   make install     everything a host needs (see README "Install")
#   make uninstall   remove it again (keeps an edited /etc/security/vrf.conf)
#   make test        install test dependencies, run the whole suite (host + VM)
#   make check       the tests that need neither root nor the kernel (seconds, any user)
#   make demo        a sandbox ssh login that lands in a VRF, then clean up
#   make bench       benchmarks (figures in the README)

PYTHON      ?= /usr/bin/python3
DESTDIR     ?=
# Where the system interpreter (the one pam_python embeds) looks for packages.
PYLIBDIR    ?= $(shell $(PYTHON) -c 'import site; print(site.getsitepackages()[0])')
PREFIX      ?= /usr/local
# pam-vrf is a user command (operators run `pam-vrf exec`/`identify` in their
# sessions); the helper is a daemon.
BINDIR      ?= $(PREFIX)/bin
SBINDIR     ?= $(PREFIX)/sbin
LIBEXECDIR  ?= /usr/lib/pam-vrf
UNITDIR     ?= /usr/local/lib/systemd/system
SYSUSERSDIR ?= /usr/local/lib/sysusers.d
TMPFILESDIR ?= /usr/local/lib/tmpfiles.d
PAMCONFIGDIR ?= /usr/share/pam-configs
MANDIR      ?= /usr/local/share/man
DOCDIR      ?= /usr/local/share/doc/pam-vrf
VRFCONF     ?= /etc/security/vrf.conf
# The multiarch directory libpam loads modules from.
PAMDIR      ?= /usr/lib/$(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)/security
# Hardened, warning-free build; only the pam_sm_* entry points are exported.
# The module runs the offline decider with this interpreter (absolute: PATH
# is the caller's under su/sudo).
PAM_CFLAGS  = -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden \
              -fstack-protector-strong -D_FORTIFY_SOURCE=2 -DPAM_VRF_PYTHON='"$(PYTHON)"'
PAM_LDFLAGS = -Wl,-z,relro,-z,now
# Installed paths in the unit and the man pages.
PATHS_SED   = -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
              -e 's|@UNITDIR@|$(UNITDIR)|g' -e 's|@SYSUSERSDIR@|$(SYSUSERSDIR)|g' -e 's|@TMPFILESDIR@|$(TMPFILESDIR)|g'

.PHONY: all install uninstall test test-host test-vm check deps demo bench clean

all: pam_module/pam_vrf.so

pam_module/pam_vrf.so: pam_module/pam_vrf.c
	$(CC) $(PAM_CFLAGS) $(CFLAGS) -o $@ $< $(PAM_LDFLAGS) $(LDFLAGS) -lpam

install: all
	rm -rf $(DESTDIR)$(PYLIBDIR)/pam_vrf
	mkdir -p $(DESTDIR)$(PYLIBDIR)
	cp -r pam_vrf $(DESTDIR)$(PYLIBDIR)/pam_vrf
	find $(DESTDIR)$(PYLIBDIR)/pam_vrf -name __pycache__ -prune -exec rm -rf {} +
	chmod -R u=rwX,go=rX $(DESTDIR)$(PYLIBDIR)/pam_vrf
	$(PYTHON) -m compileall -q $(DESTDIR)$(PYLIBDIR)/pam_vrf
	install -D -m 0644 pam.d/pam_vrf.py $(DESTDIR)$(LIBEXECDIR)/pam_vrf.py
	install -D -m 0644 pam_module/pam_vrf.so $(DESTDIR)$(PAMDIR)/pam_vrf.so
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR)
	printf '#!%s\nimport sys\nfrom pam_vrf.cli import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(BINDIR)/pam-vrf
	printf '#!%s\nimport sys\nfrom pam_vrf.helper.main import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	chmod 0755 $(DESTDIR)$(BINDIR)/pam-vrf $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed $(PATHS_SED) helper/pam-vrf-helper.service > $(DESTDIR)$(UNITDIR)/pam-vrf-helper.service
	install -m 0644 helper/pam-vrf-helper.socket helper/pam-vrf-helper-root.socket $(DESTDIR)$(UNITDIR)/
	install -D -m 0644 helper/sysusers-pam-vrf.conf $(DESTDIR)$(SYSUSERSDIR)/pam-vrf.conf
	install -D -m 0644 helper/tmpfiles-pam-vrf.conf $(DESTDIR)$(TMPFILESDIR)/pam-vrf.conf
	install -D -m 0644 pam.d/pam-auth-update.pam-vrf $(DESTDIR)$(PAMCONFIGDIR)/pam-vrf
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	for page in vrf.conf.5 pam-vrf.8 pam-vrf-helper.8 pam_vrf.8; do \
	  sed $(PATHS_SED) doc/$$page > $(DESTDIR)$(MANDIR)/man$${page##*.}/$$page; \
	  chmod 0644 $(DESTDIR)$(MANDIR)/man$${page##*.}/$$page; done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 pam.d/vrf.conf.sample $(DESTDIR)$(DOCDIR)/vrf.conf.sample
	install -D -m 0644 profile.d/pam-vrf.sh $(DESTDIR)$(DOCDIR)/examples/profile.d-pam-vrf.sh
	# Never overwrite an operator's policy.
	if [ ! -e $(DESTDIR)$(VRFCONF) ]; then install -D -m 0644 pam.d/vrf.conf.sample $(DESTDIR)$(VRFCONF); fi
	# The helper's user, where there is no systemd-sysusers to make it.
	if [ -z "$(DESTDIR)" ] && ! getent passwd pam-vrf >/dev/null; then \
	  if command -v systemd-sysusers >/dev/null && [ -d /run/systemd/system ]; then systemd-sysusers $(SYSUSERSDIR)/pam-vrf.conf; \
	  else useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin pam-vrf; fi; fi
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

uninstall:
	-if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now pam-vrf-helper.socket pam-vrf-helper-root.socket pam-vrf-helper.service; fi
	rm -rf $(DESTDIR)$(PYLIBDIR)/pam_vrf $(DESTDIR)$(LIBEXECDIR)
	rm -f $(DESTDIR)$(PAMDIR)/pam_vrf.so
	rm -f $(DESTDIR)$(BINDIR)/pam-vrf $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	rm -f $(DESTDIR)$(UNITDIR)/pam-vrf-helper.service $(DESTDIR)$(UNITDIR)/pam-vrf-helper.socket $(DESTDIR)$(UNITDIR)/pam-vrf-helper-root.socket
	rm -f $(DESTDIR)$(SYSUSERSDIR)/pam-vrf.conf $(DESTDIR)$(TMPFILESDIR)/pam-vrf.conf
	rm -f $(DESTDIR)$(PAMCONFIGDIR)/pam-vrf
	rm -f $(DESTDIR)$(MANDIR)/man5/vrf.conf.5 $(DESTDIR)$(MANDIR)/man8/pam-vrf.8 $(DESTDIR)$(MANDIR)/man8/pam-vrf-helper.8 $(DESTDIR)$(MANDIR)/man8/pam_vrf.8
	# The policy goes only if it is still the untouched sample.
	if cmp -s pam.d/vrf.conf.sample $(DESTDIR)$(VRFCONF); then rm -f $(DESTDIR)$(VRFCONF); fi
	rm -rf $(DESTDIR)$(DOCDIR)
	-if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Dependencies (Debian packages), installed only when missing: each job its own set.
deps:
	sh tools/install-deps test

test: deps test-host test-vm

test-host:
	$(PYTHON) -m pytest -q -p no:cacheprovider --ignore=tests/vm tests

# The tests that need neither root nor the kernel (parsers, policy, PAM stacks,
# protocol, docs against the code): seconds, as any user, under any python3
# with pytest >= 7 (make check CHECK_PYTHON=python3.13). Markers: setup.cfg.
CHECK_PYTHON ?= python3
check:
	$(CHECK_PYTHON) -m pytest -q -p no:cacheprovider -m "not root and not slow and not vm" tests

# The real-VRF suite in a VM of each Debian release in SUITES, one after the
# other (make test-vm SUITES=trixie: one); fails if any failed. One `make deb`
# for all (PAM_VRF_VM_DEB); the benchmarks run on BENCH_SUITE only (the
# README's figures).
SUITES      ?= bookworm trixie
BENCH_SUITE ?= bookworm
test-vm: deb
	@rc=0; deb=$$(ls -1 $(CURDIR)/dist/pam-vrf_*.deb | tail -n 1); for s in $(SUITES); do \
	    PAM_VRF_VM_DEB=$$deb vagrant/ci/test-vm --suite $$s $$([ $$s = "$(BENCH_SUITE)" ] || echo --no-bench) || rc=1; \
	done; exit $$rc

demo:
	sh tools/install-deps demo
	$(PYTHON) tools/demo.py

bench: deps
	$(PYTHON) bench/run.py

clean:
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -f pam_module/pam_vrf.so

# Debian package (debian/): exactly one dist/pam-vrf_VERSION_ARCH.deb, built
# by dpkg-buildpackage in a temporary copy of the tree (tracked and new,
# non-ignored files), so no build product lands in the checkout.
.PHONY: deb deb-deps
deb-deps:
	sh tools/install-deps deb

deb: deb-deps
	set -e; tmp=$$(mktemp -d /tmp/pam-vrf-deb.XXXXXX); trap 'rm -rf "$$tmp"' EXIT INT TERM; \
	mkdir "$$tmp/src"; \
	if git -C "$(CURDIR)" rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git -C "$(CURDIR)" ls-files -z --cached --others --exclude-standard \
	    | tar -C "$(CURDIR)" --null --ignore-failed-read --no-recursion -T - -cf - | tar -C "$$tmp/src" -xf -; \
	else tar -C "$(CURDIR)" --exclude=./dist --exclude=./.git --exclude=__pycache__ -cf - . | tar -C "$$tmp/src" -xf -; fi; \
	version=$$(dpkg-parsechangelog -l "$$tmp/src/debian/changelog" -S Version); \
	arch=$$(dpkg-architecture -qDEB_HOST_ARCH); deb="pam-vrf_$${version}_$${arch}.deb"; \
	(cd "$$tmp/src" && dpkg-buildpackage -b -us -uc); \
	mkdir -p "$(CURDIR)/dist"; rm -f "$(CURDIR)"/dist/pam-vrf_*.deb; \
	cp "$$tmp/$$deb" "$(CURDIR)/dist/$$deb"; echo "deb: dist/$$deb"

# `vagrant up` for real (vagrant-libvirt, libvirt's qemu domain type, a local
# box from the CI image's base, provision.sh), an operator login checked to
# land in VRF mgmt, then everything destroyed; libvirtd and the VM live in a
# network namespace of their own. 3-4.5 min warm. `make test` runs it too
# (tests/test_vagrant.py; PAM_VRF_VAGRANT_UP=0 skips it there). Debian 13;
# make vagrant-up VAGRANT_SUITE=bookworm: Debian 12.
VAGRANT_SUITE ?= trixie
.PHONY: vagrant-up
vagrant-up:
	vagrant/ci/vagrant-up --suite $(VAGRANT_SUITE)
