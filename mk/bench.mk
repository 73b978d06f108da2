# `make bench`: speed measured against the machine's limits (issue 7).
# Not part of `make test`. bench/README.md says what each figure means;
# BENCH_ARGS passes options to bench/run (e.g. BENCH_ARGS=--quick).
BENCH_BINS := $(BUILD)/bench/limit_k $(BUILD)/bench/limit_r $(BUILD)/bench/parse_only
BENCH_ARGS ?=

.PHONY: bench bench-tools
bench-tools: $(BENCH_BINS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# Like `make test`, it installs what it needs first (a fresh machine included),
# and the Python consumer's Kafka client (bench/py_consumer: the issue's baseline).
BENCH_PKGS := python3-confluent-kafka
bench: deps
	scripts/install-deps $(BENCH_PKGS)
	$(MAKE) all bench-tools
	/usr/bin/python3 bench/run --build $(BUILD) $(BENCH_ARGS)
