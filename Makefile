# pam-vrf — install, test, demo. Run as root (sudo make ...).
#
#   make install     everything a host needs (see README "Install")
#   make uninstall   remove it again (keeps an edited /etc/security/vrf.conf)
#   make test        install test dependencies, run the whole suite (host + VM)
#   make demo        a sandbox ssh login that lands in a VRF, then clean up
#   make bench       benchmarks (figures in the README)

PYTHON      ?= /usr/bin/python3
DESTDIR     ?=
# Where the system interpreter (the one pam_python embeds) looks for packages.
PYLIBDIR    ?= $(shell $(PYTHON) -c 'import site; print(site.getsitepackages()[0])')
SBINDIR     ?= /usr/local/sbin
LIBEXECDIR  ?= /usr/lib/pam-vrf
UNITDIR     ?= /usr/local/lib/systemd/system
SYSUSERSDIR ?= /usr/local/lib/sysusers.d
TMPFILESDIR ?= /usr/local/lib/tmpfiles.d
PAMCONFIGDIR ?= /usr/share/pam-configs
MANDIR      ?= /usr/local/share/man
DOCDIR      ?= /usr/local/share/doc/pam-vrf
VRFCONF     ?= /etc/security/vrf.conf

.PHONY: all install uninstall test test-host test-vm deps demo bench clean

all:
	@echo "nothing to build; try: sudo make install | sudo make test | sudo make demo"

install:
	rm -rf $(DESTDIR)$(PYLIBDIR)/pam_vrf
	mkdir -p $(DESTDIR)$(PYLIBDIR)
	cp -r pam_vrf $(DESTDIR)$(PYLIBDIR)/pam_vrf
	find $(DESTDIR)$(PYLIBDIR)/pam_vrf -name __pycache__ -prune -exec rm -rf {} +
	chmod -R u=rwX,go=rX $(DESTDIR)$(PYLIBDIR)/pam_vrf
	$(PYTHON) -m compileall -q $(DESTDIR)$(PYLIBDIR)/pam_vrf
	install -D -m 0644 pam.d/pam_vrf.py $(DESTDIR)$(LIBEXECDIR)/pam_vrf.py
	install -d -m 0755 $(DESTDIR)$(SBINDIR)
	printf '#!%s\nimport sys\nfrom pam_vrf.cli import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(SBINDIR)/pam-vrf
	printf '#!%s\nimport sys\nfrom pam_vrf.helper.main import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	chmod 0755 $(DESTDIR)$(SBINDIR)/pam-vrf $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' helper/pam-vrf-helper.service > $(DESTDIR)$(UNITDIR)/pam-vrf-helper.service
	install -m 0644 helper/pam-vrf-helper.socket $(DESTDIR)$(UNITDIR)/pam-vrf-helper.socket
	install -D -m 0644 helper/sysusers-pam-vrf.conf $(DESTDIR)$(SYSUSERSDIR)/pam-vrf.conf
	install -D -m 0644 helper/tmpfiles-pam-vrf.conf $(DESTDIR)$(TMPFILESDIR)/pam-vrf.conf
	install -D -m 0644 pam.d/pam-auth-update.pam-vrf $(DESTDIR)$(PAMCONFIGDIR)/pam-vrf
	install -D -m 0644 doc/vrf.conf.5 $(DESTDIR)$(MANDIR)/man5/vrf.conf.5
	install -D -m 0644 doc/pam-vrf.8 $(DESTDIR)$(MANDIR)/man8/pam-vrf.8
	install -D -m 0644 doc/pam-vrf-helper.8 $(DESTDIR)$(MANDIR)/man8/pam-vrf-helper.8
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 pam.d/vrf.conf.sample $(DESTDIR)$(DOCDIR)/vrf.conf.sample
	# Never overwrite an operator's policy.
	if [ ! -e $(DESTDIR)$(VRFCONF) ]; then install -D -m 0644 pam.d/vrf.conf.sample $(DESTDIR)$(VRFCONF); fi
	# The helper's user, where there is no systemd-sysusers to make it.
	if [ -z "$(DESTDIR)" ] && ! getent passwd pam-vrf >/dev/null; then \
	  if command -v systemd-sysusers >/dev/null && [ -d /run/systemd/system ]; then systemd-sysusers $(SYSUSERSDIR)/pam-vrf.conf; \
	  else useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin pam-vrf; fi; fi
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

uninstall:
	-if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now pam-vrf-helper.socket pam-vrf-helper.service; fi
	rm -rf $(DESTDIR)$(PYLIBDIR)/pam_vrf $(DESTDIR)$(LIBEXECDIR)
	rm -f $(DESTDIR)$(SBINDIR)/pam-vrf $(DESTDIR)$(SBINDIR)/pam-vrf-helper
	rm -f $(DESTDIR)$(UNITDIR)/pam-vrf-helper.service $(DESTDIR)$(UNITDIR)/pam-vrf-helper.socket
	rm -f $(DESTDIR)$(SYSUSERSDIR)/pam-vrf.conf $(DESTDIR)$(TMPFILESDIR)/pam-vrf.conf
	rm -f $(DESTDIR)$(PAMCONFIGDIR)/pam-vrf
	rm -f $(DESTDIR)$(MANDIR)/man5/vrf.conf.5 $(DESTDIR)$(MANDIR)/man8/pam-vrf.8 $(DESTDIR)$(MANDIR)/man8/pam-vrf-helper.8
	# The policy goes only if it is still the untouched sample.
	if cmp -s pam.d/vrf.conf.sample $(DESTDIR)$(VRFCONF); then rm -f $(DESTDIR)$(VRFCONF); fi
	rm -rf $(DESTDIR)$(DOCDIR)
	-if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Test and demo dependencies (Debian packages), installed only when missing.
deps:
	sh tools/install-deps

test: deps test-host test-vm

test-host:
	$(PYTHON) -m pytest -q -p no:cacheprovider --ignore=tests/vm tests

test-vm:
	vagrant/ci/test-vm

demo: deps
	$(PYTHON) tools/demo.py

bench: deps
	$(PYTHON) bench/run.py

clean:
	find . -name __pycache__ -prune -exec rm -rf {} +
