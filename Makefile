# Thin wrapper: the two README commands and a few conveniences.
# CMake + CTest do the real work.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
LISTEN     ?= 127.0.0.1:8888
DATA_DIR   ?= .data
FUZZ_SECONDS ?= 30
FUZZERS    := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))

.PHONY: all deps test-deps build run test test-unit test-asan fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

# Install, build and run the gateway with embedded defaults (SQLite in
# .data/, loopback, development credentials created and printed).
run: build
	@HOTPLEX_BIN=$(BUILD)/hotplex LISTEN=$(LISTEN) DATA_DIR=$(DATA_DIR) scripts/run-dev.sh

# Install, build and run every test: the normal build, then the same suite
# under ASan+UBSan, then each fuzz target for a bounded time.
test: test-deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPLEX_WERROR=ON >/dev/null
	cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j2
	$(MAKE) --no-print-directory test-asan fuzz

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -R '^unit\.'

test-asan: test-deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DHOTPLEX_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j2

fuzz: test-deps
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DHOTPLEX_FUZZ=ON >/dev/null
	cmake --build $(FUZZ_BUILD) -j$(JOBS) --target $(FUZZERS)
	scripts/fuzz-smoke.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

# Benchmarks: gateway vs the Node.js reference relay vs the raw ceiling
# (bench/run.sh; results in bench/results/, write-up in docs/benchmarks.md).
bench: build
	bench/run.sh
