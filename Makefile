# benefitd - GNU make build. `make` builds build/benefitd; see README.md for the rest.
PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build
CC       ?= cc
PKGS      = libevent rdkafka hiredis libcjson yaml-0.1 libsystemd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS   ?= -O2 -g
# Required flags live apart from CFLAGS so `make CFLAGS=...` (sanitizers, -O0) cannot drop them.
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -MMD -MP $(PKG_CFLAGS) \
             -DBENEFITD_PLUGIN_DIR='"$(PREFIX)/lib/benefitd/plugins"' $(CFLAGS)
LDLIBS   += $(PKG_LIBS) -levent -lm -ldl
SAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# Data flow order: source -> decode -> enrich (profiles, plugins) -> rules -> policy -> sink;
# core and replay around them.
LIB_SRCS := $(wildcard daemon/core/*.c daemon/source/*.c daemon/decode/*.c daemon/enrich/*.c \
              daemon/rules/*.c daemon/policy/*.c daemon/sink/*.c daemon/replay/*.c)
LIB_SRCS := $(filter-out daemon/core/main.c,$(LIB_SRCS))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_BINS := $(BUILD)/kafkatool

.PHONY: all deps test test-unit test-unit-valgrind test-valgrind test-integration test-integration-san san-daemon test-sanitize test-replay demo install clean check-rules
all: $(BUILD)/benefitd $(TOOL_BINS) $(PLUGIN_SOS)

deps:
	scripts/install-deps

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libbenefitd.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/benefitd: $(BUILD)/daemon/core/main.o $(BUILD)/libbenefitd.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/kafkatool: $(BUILD)/tests/tools/kafkatool.o $(BUILD)/libbenefitd.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libbenefitd.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# Fixture plugins for the loader tests (tests/unit/test_plugins.c finds them
# beside itself). Order-only: the link rule above links $^.
FIXTURE_SOS := $(patsubst tests/unit/fixtures/plugin_%.c,$(BUILD)/tests/fixtures/%.so,$(wildcard tests/unit/fixtures/plugin_*.c))
$(BUILD)/tests/fixtures/%.so: tests/unit/fixtures/plugin_%.c plugins/benefitd_plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -shared -fvisibility=hidden -o $@ $<
$(BUILD)/tests/test_plugins: | $(FIXTURE_SOS)

# `make test` is the README's test command: it installs what it needs, builds,
# starts real servers on loopback, runs every suite and stops them.
# The last three suites run side by side: each has its own servers, ports and
# temp dirs, and spends most of its time waiting (group joins, timers, a paced
# producer), not computing. Together they take about 3.5 minutes, one after
# another 7, and the load they put on each other shakes out races (test_time's
# test_k was found so). Their output is grouped per suite.
test: deps
	$(MAKE) all $(UNIT_BINS)
	$(MAKE) test-unit
	$(MAKE) test-plugins
	$(MAKE) test-sanitize
	$(MAKE) test-replay
	$(MAKE) fuzz-run FUZZ_SECONDS=5
	$(MAKE) san-daemon
	$(MAKE) -j3 --output-sync=target test-integration test-faults test-integration-san

# The unit suites again under AddressSanitizer + UndefinedBehaviorSanitizer.
test-sanitize:
	$(MAKE) BUILD=build-san CFLAGS="$(SAN_FLAGS)" test-unit test-plugins

test-unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

# Memcheck sees what ASan does not: reads of uninitialised memory (a heap
# buffer's unused tail), and leaks. An error or a leak fails the run. Not in
# `make test` (it adds about a minute); run it now and then, and before a release.
VALGRIND = valgrind -q --error-exitcode=1 --leak-check=full
test-unit-valgrind: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== valgrind $$t"; $(VALGRIND) $$t; done

test-valgrind: test-unit-valgrind test-plugins-valgrind

# Replay of the seed scenarios against an independently derived expected output.
test-replay: $(BUILD)/benefitd
	tests/replay/run

test-integration: all
	tests/integration/run-all

# The daemon built with ASan + UBSan under integration suites: any
# sanitizer report in a daemon log fails its test (leaks are left to valgrind
# on the unit suites: librdkafka's threads make LeakSanitizer noisy).
# `make test` runs the profile suite, the pipeline tests that drive the
# daemon's own paths, the wait test that takes every path of a grant
# rebuilt at fire time, the one of schedules held behind another and the one of a Redis restart
# with a schedule and its cancel in flight this way (`check`, the stalled stop and the broker
# outage are left to the plain run and the fault suite, to keep CI short;
# SAN_SUITES changes it).
P_ := tests.integration.test_pipeline.PipelineTest.test_
SAN_SUITES ?= $(P_)a_end_to_end_matches_replay $(P_)b_exact_grants_for_hand_written_events \
              $(P_)c_kill9_mid_stream_then_restart $(P_)d_sigterm_graceful_stop $(P_)e_redis_restart_mid_stream \
              $(P_)f_duplicate_delivery_grants_once $(P_)g_reload_swaps_good_rules_and_refuses_bad_ones \
              $(P_)i_backpressure_pauses_and_loses_nothing $(P_)l_failed_push_is_retried_not_dropped \
              tests.integration.test_profiles \
              tests.integration.test_time.TimeTest.test_g_wait_parts_that_the_body_cannot_rebuild \
              tests.integration.test_time.TimeTest.test_j_held_behind_the_schedule_in_flight \
              tests.integration.test_time.TimeTest.test_k_redis_restart_does_not_revive_a_cancelled_wait \
              tests.integration.test_ops.OpsTest.test_metrics_health_and_notify
# build-san/benefitd, built by a make of its own (BUILD and CFLAGS are the
# whole build's); `make test` builds it before the suites run side by side.
san-daemon:
	$(MAKE) BUILD=build-san CFLAGS="$(SAN_FLAGS)" build-san/benefitd

test-integration-san: all san-daemon
	BENEFITD_BIN=$(CURDIR)/build-san/benefitd ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    /usr/bin/python3 -m unittest $(SAN_SUITES)

check-rules: $(BUILD)/benefitd
	$(BUILD)/benefitd check -c etc/benefitd.yaml

demo: deps
	$(MAKE) all
	scripts/demo

# The binary, unit and samples go under PREFIX; the live config and rules go to
# /etc/benefitd only when absent, so a reinstall never overwrites an
# operator's edits (the samples stay in share/benefitd for reference).
install: $(BUILD)/benefitd $(PLUGIN_SOS) install-extra
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/benefitd/rules \
	    $(DESTDIR)$(PREFIX)/lib/benefitd/plugins $(DESTDIR)/etc/benefitd
	install -m 0755 $(BUILD)/benefitd $(DESTDIR)$(PREFIX)/bin/benefitd
	install -m 0644 $(PLUGIN_SOS) $(DESTDIR)$(PREFIX)/lib/benefitd/plugins/
	install -d $(DESTDIR)$(PREFIX)/include/benefitd
	install -m 0644 plugins/benefitd_plugin.h $(DESTDIR)$(PREFIX)/include/benefitd/
	install -m 0644 rules/*.yaml $(DESTDIR)$(PREFIX)/share/benefitd/rules/
	install -m 0644 etc/benefitd.yaml $(DESTDIR)$(PREFIX)/share/benefitd/benefitd.yaml.example
	[ -e $(DESTDIR)/etc/benefitd/benefitd.yaml ] || \
	    sed -e 's|^  dir: \.\./rules .*|  dir: rules                    # /etc/benefitd/rules|' \
	        -e 's|^  dir: \.\./build/plugins .*|  dir: $(PREFIX)/lib/benefitd/plugins|' etc/benefitd.yaml \
	    > $(DESTDIR)/etc/benefitd/benefitd.yaml
	[ -e $(DESTDIR)/etc/benefitd/rules ] || { install -d $(DESTDIR)/etc/benefitd/rules && \
	    install -m 0644 rules/*.yaml $(DESTDIR)/etc/benefitd/rules/; }
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/bin/benefitd|$(PREFIX)/bin/benefitd|g' etc/benefitd.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/benefitd.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/benefitd.service

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Optional subsystems' targets (bench, fuzz, ...) live in their own fragments.
-include $(wildcard mk/*.mk)
