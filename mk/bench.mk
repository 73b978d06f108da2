# `make bench`: speed measured against the machine's limits (issue 7).
# Not part of `make test`. bench/README.md says what each figure means.
BENCH_BINS := $(BUILD)/bench/limit_k $(BUILD)/bench/limit_r $(BUILD)/bench/parse_only
BENCH_ARGS ?=

.PHONY: bench bench-tools
bench-tools: $(BENCH_BINS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

bench: all bench-tools
	/usr/bin/python3 bench/run --build $(BUILD) $(BENCH_ARGS)
