# dsat: the two commands are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
NODE := node_modules/.bin/node
NODE_RUN := $(NODE) --conditions=@dsat/source --disable-warning=ExperimentalWarning
BIN := $(CURDIR)/node_modules/.bin
export PATH := $(BIN):$(PATH)

.PHONY: all deps python gen check-gen check-breaking sdk build lint typecheck cycles unit test chaos demo up bench clean

all: test

## deps: npm install (Node 24 comes with it); etcd and Python's gRPC from Debian where missing.
deps: node_modules/.installed
	@bash scripts/ensure-etcd.sh
	@bash scripts/ensure-python.sh

## python: Debian's gRPC and protobuf for /usr/bin/python3, and examples/python-worker/gen.
python:
	@bash scripts/ensure-python.sh

node_modules/.installed: package.json package-lock.json sdk/package.json
	@bash scripts/ensure-node.sh
	@# npm ci refuses this lock file: the registry mirror here lacks some other platforms'
	@# optional binaries (biome, buf), so npm install (which follows the lock) does the job.
	npm install --no-audit --no-fund --loglevel=error
	@$(NODE) --version | grep -q '^v24\.' || { echo "Node 24 did not install (node_modules/.bin/node is $$($(NODE) --version))"; exit 1; }
	@touch $@

## gen: regenerate sdk/src/gen from proto/ (protoc-gen-es through buf).
gen: deps
	buf generate

## check-gen: fails when sdk/src/gen is not what proto/ generates.
check-gen: deps
	@tmp=$$(mktemp -d) && cp -r sdk/src/gen $$tmp/before && buf generate && \
	  if ! diff -r $$tmp/before sdk/src/gen >/dev/null; then \
	    echo "sdk/src/gen was stale: regenerated it; commit the result (make gen)"; diff -r $$tmp/before sdk/src/gen | head -20; rm -rf $$tmp; exit 1; \
	  fi; rm -rf $$tmp; echo "generated code is up to date"

## check-breaking: proto/ against the last released contract (contract/, buf FILE rules).
check-breaking: deps
	bash scripts/check-breaking.sh

## sdk: build the SDK package (sdk/dist), as `npm pack` in sdk/ does.
sdk: deps
	bash scripts/build-sdk.sh

## build: the SDK and the services as JavaScript (sdk/dist, dist/services), what deployments run.
build: deps
	bash scripts/build.sh

lint: deps
	buf lint
	biome lint --error-on-warnings sdk/src services test scripts bench

typecheck: deps
	tsc -p .

cycles: deps
	$(NODE_RUN) scripts/check-cycles.ts sdk/src services

unit: deps
	$(NODE) node_modules/ava/entrypoints/cli.mjs 'sdk/src/**/*.test.ts' 'services/**/*.test.ts' 'bench/**/*.test.ts'

## test: lint, typecheck, generated code, contract, import cycles, then every test (real etcd, real processes).
test: deps check-gen check-breaking lint typecheck cycles
	$(NODE) node_modules/ava/entrypoints/cli.mjs

## chaos: 10,000 tasks while workers, a router and a status server are killed and etcd restarts (CHAOS_FLAGS=--serve-status: routers serving StatusService, two of them killed).
chaos: deps
	$(NODE_RUN) test/chaos/chaos.ts --tasks 10000 $(CHAOS_FLAGS)

## bench: dsat beside a raw grpc-js router and Moleculer on loopback; results in bench/results/ (BENCH_FLAGS=--quick or --profile).
bench: deps build
	$(NODE_RUN) bench/run.ts $(BENCH_FLAGS)

## demo: a local satellite (etcd started for you), a three-stage pipeline, 1000 tasks, live progress.
demo: deps
	$(NODE_RUN) services/cli/main.ts demo

## up: the local satellite for examples/demo/pipeline.yaml, until Ctrl-C.
up: deps
	$(NODE_RUN) services/cli/main.ts up examples/demo/pipeline.yaml

clean:
	rm -rf .dsat node_modules sdk/dist
