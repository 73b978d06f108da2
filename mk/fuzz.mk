# mk/fuzz.mk - libFuzzer targets for the decoder, the expression compiler and
# the rule loader (issue 6, item 5).
#
#   make fuzz-build                  build-fuzz/fuzz_{decode,expr,rules}
#   make fuzz-run [FUZZ_SECONDS=20]  each target for FUZZ_SECONDS over tests/fuzz/corpus/<t>,
#                                    after replaying tests/fuzz/crashes/<t>-*; fails on any crash
#   make fuzz-one T=expr [FUZZ_SECONDS=...] [FUZZ_ARGS=...]   one target, for longer sessions
#
# Needs clang and libFuzzer (Debian: clang, libclang-rt-14-dev). The library's
# gcc objects carry no coverage, so the sources each target needs are compiled
# again with clang (-fsanitize=fuzzer-no-link,address,undefined) under
# build-fuzz/. New corpus entries go to a temporary directory that is removed
# afterwards; crashes are written to build-fuzz/artifacts/. To keep an
# interesting input, minimise it (`build-fuzz/fuzz_T -minimize_crash=1 FILE`
# or `-merge=1`) and copy it by hand.

FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 20
FUZZ_ARGS    ?=
FUZZ_SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -MMD -MP -O1 -g \
                $(FUZZ_SAN) $(shell pkg-config --cflags libcjson yaml-0.1 2>/dev/null)
FUZZ_LDLIBS   = $(shell pkg-config --libs libcjson yaml-0.1 2>/dev/null) -lm

FUZZ_TARGETS := decode expr rules
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

# What each target links, compiled from source with coverage.
FUZZ_SRCS_decode := daemon/decode/decode.c daemon/core/util.c
FUZZ_SRCS_expr   := $(FUZZ_SRCS_decode) daemon/rules/expr.c daemon/rules/template.c
FUZZ_SRCS_rules  := $(FUZZ_SRCS_expr) daemon/rules/rules.c daemon/core/yamlnode.c daemon/core/diag.c

# Longest input tried: past the second decoder's 2048-byte limit; expressions
# and rule files are small by nature, and short inputs fuzz faster.
FUZZ_MAXLEN_decode := 4096
FUZZ_MAXLEN_expr   := 1024
FUZZ_MAXLEN_rules  := 8192

.PHONY: fuzz-build fuzz-run fuzz-one fuzz-clean

fuzz-build: $(FUZZ_BINS)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

define fuzz_link_rule
$(FUZZ_BUILD)/fuzz_$(1): $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_$(1).o $(FUZZ_SRCS_$(1):%.c=$(FUZZ_BUILD)/obj/%.o)
	$$(FUZZ_CC) $$(FUZZ_CFLAGS) -fsanitize=fuzzer -o $$@ $$^ $$(FUZZ_LDLIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call fuzz_link_rule,$(t))))

fuzz-run: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do $(MAKE) --no-print-directory fuzz-one T=$$t; done

# One target: replay the checked-in crash reproducers (they must pass), then
# fuzz for FUZZ_SECONDS from the corpus. libFuzzer writes new inputs to its
# first directory, a temporary one removed afterwards.
fuzz-one: $(FUZZ_BUILD)/fuzz_$(T)
	@set -e; t=$(T); bin=$(FUZZ_BUILD)/fuzz_$$t; \
	repro=$$(ls tests/fuzz/crashes/$$t-* 2>/dev/null || true); \
	if [ -n "$$repro" ]; then echo "== fuzz_$$t: reproducers"; $$bin $$repro; fi; \
	mkdir -p $(FUZZ_BUILD)/artifacts; tmp=$$(mktemp -d); \
	echo "== fuzz_$$t: $(FUZZ_SECONDS)s"; \
	rc=0; $$bin -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAXLEN_$(T)) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- \
	    $$( [ -f tests/fuzz/$$t.dict ] && echo -dict=tests/fuzz/$$t.dict ) $(FUZZ_ARGS) \
	    $$tmp tests/fuzz/corpus/$$t || rc=$$?; \
	rm -rf $$tmp; \
	if [ $$rc -ne 0 ]; then echo "fuzz_$$t FAILED (exit $$rc); the input is in $(FUZZ_BUILD)/artifacts/" >&2; exit 1; fi

fuzz-clean:
	rm -rf $(FUZZ_BUILD)

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
