# The two commands a new machine needs: `make demo` and `make test`.
CARGO ?= cargo

.PHONY: setup build demo test fuzz lint fmt clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

## Run the gateway with a stand-in WeChat and an echo app on loopback; prints what to try.
demo: build
	./target/release/wxgate demo

## Everything CI runs: formatting, lints, unit and end-to-end tests.
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	rm -rf target/tmp
	$(CARGO) test --locked
	bash scripts/check-logs.sh
	FUZZ_SECONDS=5 bash scripts/fuzz.sh

## Fuzz every target longer: make fuzz FUZZ_SECONDS=600
fuzz:
	bash scripts/fuzz.sh

lint:
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
