# Thin wrapper: the two README commands and a few conveniences.
# CMake + CTest do the real work.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
LISTEN     ?= 127.0.0.1:8888
DATA_DIR   ?= .data
FUZZ_SECONDS ?= 30

.PHONY: all deps test-deps build run test test-unit test-asan fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

# Install, build and run the gateway with embedded defaults.
run: build
	@mkdir -p $(DATA_DIR)
	@echo "hotplex: WebSocket ws://$(LISTEN)/ws  health http://$(LISTEN)/health  data $(DATA_DIR)"
	@echo "hotplex: dev mode (loopback, no credentials): every client is user 'anonymous'"
	@echo "hotplex: try it:  /usr/bin/python3 scripts/echo_turn.py ws://$(LISTEN)/ws 'hello'"
	exec $(BUILD)/hotplex serve --listen $(LISTEN) --data-dir $(DATA_DIR)

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
	cmake --build $(FUZZ_BUILD) -j$(JOBS)
	scripts/fuzz-smoke.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
