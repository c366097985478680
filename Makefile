# Switchyard: `make up` runs the pipeline on this machine, `make test` proves it.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: help deps deps-test build build-release up down status logs test lint bench fuzz clean

help:
	@echo "make up      install what is missing, build, start broker + registry + services, apply topics"
	@echo "make down    stop everything make up started"
	@echo "make status  what runs where"
	@echo "make logs    follow every service's log"
	@echo "make test    lint, build, and run every test against real processes"
	@echo "make bench   benchmarks, each against its baseline; writes results/bench.md and .json"
	@echo "make fuzz    fuzz the packet decoder, the SIM's APDUs and Avro decoding (FUZZ_SECONDS each, default 60)"

deps:
	@scripts/deps.sh

deps-test:
	@scripts/deps.sh --test

build:
	$(CARGO) build --workspace --bins

# `make up` runs optimised binaries: debug ones cost several times the CPU per record.
build-release:
	$(CARGO) build --release --workspace --bins

up: deps build-release
	@scripts/stack.sh up

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

logs:
	@scripts/stack.sh logs

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Integration tests start their own Apache Kafka brokers and registries on free ports (and
# stop them), so `make test` works with or without `make up` running.
test: deps-test lint build
	$(CARGO) test --workspace

# Timing matters here, so release builds. Results: results/bench.md and results/bench.json.
BENCH_RECORDS ?= 100000
# Consume→produce rounds (the pass-through and grafana-projector against the raw loop): three
# million records, 10-17 s each, so a round measures the steady rate and not its first
# second nor one slow broker moment. At 100,000 records a round lasted 0.4-0.9 s; at a
# million, once consumers stopped idling on a full prefetch queue (9326376), 3-6 s, and
# grafana-projector's rounds ranged 151-277k records/s (178-197k at three million).
PIPELINE_RECORDS ?= 3000000
PROCESSOR_RECORDS ?= 3000000
# Switchyard beside Kafka Streams (bench/streams, built here with Maven): input read whole by
# each of 40 runs (2 kinds of work x 2 guarantees x 2 contestants x 5 rounds).
STREAMS_RECORDS ?= 200000
bench: deps
	$(CARGO) build --release --workspace --bins
	./target/release/switchyard-bench pipeline --records $(PIPELINE_RECORDS)
	./target/release/switchyard-bench gateway --packets $(BENCH_RECORDS)
	./target/release/switchyard-bench processor --records $(PROCESSOR_RECORDS)
	./target/release/switchyard-bench streams --records $(STREAMS_RECORDS)
	./target/release/switchyard-bench latency
	./target/release/switchyard-bench roundtrip
	./target/release/switchyard-bench memory --modems 1000000
	./target/release/switchyard-bench scale
	./target/release/switchyard-bench idle
	./target/release/switchyard-bench burst
	./target/release/switchyard-bench registry

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decode apdu avro
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf .run
