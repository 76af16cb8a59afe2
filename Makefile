# layerfs — see README.md. `make demo` runs the main job; `make test`
# installs what the tests need and runs them all.

GO       ?= go
BIN      := bin
FUZZTIME ?= 10s
PKGS     := ./...

.PHONY: all build test test-rootless unit race e2e fuzz bench lint demo deps clean

all: build

# Static binaries (no libc mapped into every daemon); layerfs-overlay,
# the mount program of one daemon per container, is a binary of its own so
# its daemons map none of the CLI's code.
export CGO_ENABLED ?= 0

build:
	$(GO) build -o $(BIN)/layerfs ./cmd/layerfs
	$(GO) build -o $(BIN)/layerfs-overlay ./cmd/layerfs-overlay

deps:
	./scripts/install-test-deps.sh

# Unit and end-to-end tests as root, the union's tests again under the race
# detector, the end-to-end suite again as a plain user (the rootless pass),
# then a short run of every fuzz target.
test: deps lint
	$(GO) test -count=1 -timeout 20m $(PKGS)
	$(MAKE) race
	./scripts/test-rootless.sh
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

# The end-to-end suite again, as a plain user (created once: layerfs-test,
# with a subordinate id range) with /dev/fuse at 0666 (run as root; see
# scripts/test-rootless.sh and docs/rootless.md). Part of `make test`.
test-rootless:
	./scripts/test-rootless.sh

unit: build
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests/)

# The union serves requests in parallel: its tests under the race detector
# (which needs cgo).
race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m ./fusefs/

e2e: build
	$(GO) test -count=1 -v ./tests/e2e/...

# Every Fuzz target, FUZZTIME each (make fuzz FUZZTIME=10m for a long run).
# Targets are found in the sources: `go test -list` would link a test
# binary for every package just to ask.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

bench: build deps
	$(GO) run ./tests/bench -out docs/BENCHMARKS.md

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: build
	./scripts/demo.sh

clean:
	rm -rf $(BIN)
