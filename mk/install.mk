# Install steps beyond the Makefile's `install`: the system user and the docs
# the unit points at. Hooked by `install` (Makefile: `install: ... install-extra`).
#   make install-extra PREFIX=/usr DESTDIR=...
.PHONY: install-extra
install-extra:
	install -d $(DESTDIR)$(PREFIX)/lib/sysusers.d $(DESTDIR)$(PREFIX)/share/doc/benefitd
	install -m 0644 etc/benefitd.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/benefitd.conf
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/benefitd/README.md
