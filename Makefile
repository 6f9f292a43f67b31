# The two commands a new machine needs: `make demo` and `make test`.
CARGO ?= cargo

.PHONY: setup build pgo demo test fuzz lint fmt clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

## The binary to deploy: a profile-guided release build, trained on a load like the benchmark's
## on loopback (~2x a release build): target/pgo/release/wxgate. PGO_FORCE=1 builds it anew.
pgo:
	@WXGATE_SETUP_PGO=1 bash scripts/setup.sh
	bash scripts/pgo.sh

## Run the gateway with a stand-in WeChat and an echo app on loopback; prints what to try.
## Another address: make demo LISTEN=127.0.0.1:3100
LISTEN ?= 127.0.0.1:3000
demo: build
	./target/release/wxgate demo --listen $(LISTEN)

## Everything CI runs: formatting, lints, unit and end-to-end tests (the status page in a real
## browser, a reload and an upgrade under load included).
test:
	@WXGATE_SETUP_TEST=1 bash scripts/setup.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	rm -rf target/tmp
	$(CARGO) test --locked
	# The end-to-end suites again with the fast path off (server.fast_path = false) and upstream
	# writes not batched (server.batch_upstream_writes = false): both paths, both settings.
	WXGATE_TEST_FAST_PATH=0 $(CARGO) test --locked --test '*'
	bash scripts/check-logs.sh
	bash scripts/zero-downtime.sh
	FUZZ_SECONDS=5 bash scripts/fuzz.sh

## Fuzz every target longer: make fuzz FUZZ_SECONDS=600
fuzz:
	bash scripts/fuzz.sh

## Side-by-side benchmark (nginx, HAProxy, nginx+njs, wxgate, Node) on loopback, every row run
## ROUNDS times interleaved; medians and spread, checks, idle-connection RSS; bench/out/.
## wxgate is the profile-guided build (made first, as `make pgo`; PGO=0 for the plain release build).
## Knobs: DURATION=5s ROUNDS=3 CONNECTIONS=32 IDLE_CONNS=10000 SKIP_NODE=1 WXGATE=path PGO=0 (see bench/run.sh).
.PHONY: bench soak
bench:
	bash bench/run.sh

## 180 s at 256 connections on the protected route: errors and RSS growth (PASS/FAIL).
## Knobs: SOAK_DURATION=180s SOAK_CONNECTIONS=256 SOAK_THREADS=1 (see bench/soak.sh).
soak:
	bash bench/soak.sh

lint:
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
