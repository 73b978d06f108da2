# mk/plugins.mk - the bundled plugins (plugins/<name>/<name>.c, one C file each,
# written against plugins/benefitd_plugin.h) and their cmocka tests.
#
#   make plugins                 $(BUILD)/plugins/{tiers,rfm,risk}.so
#   make test-plugins            builds them and tests/plugins/test_plugin_<name>,
#                                which dlopen $(BD_PLUGIN_DIR)/<name>.so through a fake host
#   make test-plugins-valgrind   the same tests under valgrind (leaks fail)
#
# Sanitizers: `make BUILD=build-san CFLAGS="-O1 -g -fsanitize=address,undefined
# -fno-omit-frame-pointer -fno-sanitize-recover=all" test-plugins` builds the .so
# files and the test binaries with the same flags (ASan must be in both).
# Not part of `make test`.

PLUGIN_NAMES     := tiers rfm risk
PLUGIN_SOS       := $(PLUGIN_NAMES:%=$(BUILD)/plugins/%.so)
PLUGIN_TEST_BINS := $(PLUGIN_NAMES:%=$(BUILD)/tests/test_plugin_%)
PLUGIN_CFLAGS     = $(shell pkg-config --cflags libcjson 2>/dev/null) -fPIC -fvisibility=hidden
PLUGIN_LDLIBS     = $(shell pkg-config --libs libcjson 2>/dev/null || echo -lcjson) -lm
PLUGIN_TEST_OBJS  = $(BUILD)/tests/plugins/fake_host.o

.PHONY: plugins test-plugins test-plugins-valgrind

plugins: $(PLUGIN_SOS)

# The Makefile's `all` names $(PLUGIN_SOS) before this file defines it (it is
# included last), so `make all` alone built no plugin: named here again.
all: $(PLUGIN_SOS)

# Objects apart from $(BUILD)/plugins/<name>/ so the generic non-PIC %.o rule never
# makes them; -MMD (in ALL_CFLAGS) writes $(BUILD)/plugins/pic/<name>.d.
define plugin_rules
$(BUILD)/plugins/pic/$(1).o: plugins/$(1)/$(1).c
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $$(PLUGIN_CFLAGS) -c $$< -o $$@

$(BUILD)/plugins/$(1).so: $(BUILD)/plugins/pic/$(1).o
	$$(CC) $$(ALL_CFLAGS) $$(PLUGIN_CFLAGS) -shared -o $$@ $$^ $$(PLUGIN_LDLIBS)

# An explicit rule: the top Makefile's $$(BUILD)/tests/% links tests/unit objects.
$(BUILD)/tests/test_plugin_$(1): $(BUILD)/tests/plugins/test_plugin_$(1).o $$(PLUGIN_TEST_OBJS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) -o $$@ $$^ -lcmocka -ldl $$(PLUGIN_LDLIBS)
endef
$(foreach p,$(PLUGIN_NAMES),$(eval $(call plugin_rules,$(p))))

test-plugins: $(PLUGIN_SOS) $(PLUGIN_TEST_BINS)
	@set -e; for t in $(PLUGIN_TEST_BINS); do echo "== $$t"; BD_PLUGIN_DIR=$(BUILD)/plugins $$t; done

test-plugins-valgrind: $(PLUGIN_SOS) $(PLUGIN_TEST_BINS)
	@set -e; for t in $(PLUGIN_TEST_BINS); do echo "== valgrind $$t"; \
	    BD_PLUGIN_DIR=$(BUILD)/plugins $(VALGRIND) $$t; done
