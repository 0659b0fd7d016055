# dimplugd — build, test, demo and benchmark targets.
#
# `make demo` and `make test` work on a fresh Debian machine with Go: the
# `deps` target installs the Debian packages the build needs (as root, or
# through sudo) when they are missing.

GO        ?= go
TAGS      ?= seccomp
BIN       := $(CURDIR)/bin
CAPNP_GO  := capnproto.org/go/capnp/v3
CAPNP_VER := v3.1.0-alpha.2
# libcapnp-dev: the C++ headers a test compiles generated C++ against.
# systemd: systemd-analyze checks the shipped units (cmd/dimplugd/systemd).
APT_PKGS  := capnproto libcapnp-dev libseccomp-dev bubblewrap pkg-config gcc chromium systemd curl valgrind
GOFLAGS_BUILD := -tags $(TAGS)
TESTFLAGS ?=
ifeq ($(CI),true)
TESTFLAGS += -race
endif

export CGO_ENABLED := 1

# Fuzz targets, as package:FuzzName:inputs. `make fuzz` (and `make test`,
# after the unit tests) runs each for its number of inputs (about 10 s
# each here), one at a time: go test -fuzz takes one target per run. A
# count, not a duration: with -fuzztime 10s, Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when the deadline
# hits a busy worker (go.dev/issue/75804, fixed in Go 1.27), which turned CI
# red with nothing found. `make fuzz FUZZTIME=5m` fuzzes each for that long
# instead. Seed corpora are f.Add seeds in the tests plus
# testdata/fuzz/<FuzzName>/ in each package.
FUZZTIME ?=
FUZZ_TARGETS := \
	./sdk-go/wire:FuzzLaneReadFrame:100000 \
	./sdk-go/wire:FuzzServeLane:30000 \
	./sdk-go/wire:FuzzLaneConvert:200000 \
	./daemon:FuzzControlArgs:50000 \
	./daemon:FuzzFrameMsg:500 \
	./sdk-go/termesc:FuzzString:200000 \
	./sdk-go/manifest:FuzzParse:50000 \
	./sdk-go/manifest:FuzzRoute:200000 \
	./daemon/settings:FuzzCompileValidate:100000 \
	./sdk-go/dimplug:FuzzReadHeader:200000 \
	./daemon/registry:FuzzInstallArchive:30000

EXAMPLE_PLUGINS := $(notdir $(wildcard examples/plugins/*))

.PHONY: all deps build plugins generate check-generate test fuzz lint demo bench bench-go clean install

all: build

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(BIN)/capnpc-go: go.mod
	GOBIN=$(BIN) $(GO) install $(CAPNP_GO)/capnpc-go@$(CAPNP_VER)
	@touch $@

# The API's schema files; go.capnp and c++.capnp are the code generators'
# annotations they import (shipped, so capnp needs no -I).
SCHEMAS := control daemon host http lane plugin stream

# generate rewrites the committed Go code of the schemas (sdk-go/schema,
# in the SDK's module) from the .capnp files in schema/.
generate: deps $(BIN)/capnpc-go
	cd schema && PATH=$(BIN):$$PATH capnp compile -ogo:../sdk-go/schema $(SCHEMAS:=.capnp)

# check-generate fails when the committed generated code is stale.
check-generate: generate
	@git diff --exit-code -- schema/ sdk-go/schema/ || { echo "sdk-go/schema/*.capnp.go is stale: run 'make generate' and commit"; exit 1; }

build: deps plugins
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/dimplugd ./cmd/dimplugd
	$(GO) build -o $(BIN)/dimplugctl ./cmd/dimplugctl
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/dimplugd-conformance-plugin ./daemon/conformance/plugin
	$(GO) build -o $(BIN)/dimhost ./examples/dimhost

# Plugins are static binaries: the sandbox's rootfs holds nothing else.
plugins:
	@for p in $(EXAMPLE_PLUGINS); do \
		echo "building example plugin $$p"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o examples/plugins/$$p/$$p ./examples/plugins/$$p || exit 1; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(GOFLAGS_BUILD) ./...
	cd sdk-go && $(GO) vet ./...
	cd bench && $(GO) vet $(GOFLAGS_BUILD) ./...

# The SDK (sdk-go/) is its own module: its tests run in it. The bench's
# smoke tests run without -race, as `make bench` does: valgrind (the
# callgrind section) cannot run a race-instrumented binary. The daemon
# package's tests take most of the time (34 min under -race on a loaded
# 2-core machine): hence the 60-minute bound per package.
test: deps build lint check-generate
	cd sdk-go && $(GO) test $(TESTFLAGS) -count=1 -timeout 20m ./...
	$(GO) test $(GOFLAGS_BUILD) $(TESTFLAGS) -count=1 -timeout 60m ./...
	cd bench && $(GO) test $(GOFLAGS_BUILD) -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory rust-test
	@$(MAKE) --no-print-directory fuzz

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest##*:}x; \
		if [ -n "$(FUZZTIME)" ]; then budget=$(FUZZTIME); fi; \
		echo "fuzzing $$name ($$pkg) for $$budget"; \
		dir=.; case $$pkg in ./sdk-go/*) dir=sdk-go; pkg=./$${pkg#./sdk-go/};; esac; \
		(cd $$dir && $(GO) test $(GOFLAGS_BUILD) -run '^$$' -fuzz "^$$name\$$" -fuzztime $$budget $$pkg) || exit 1; \
	done

demo: build
	./examples/demo.sh

# The bench (bench/) is its own module, so that its baselines (go-plugin,
# gRPC) stay out of the daemon's. Its hooks section also runs the Rust
# host (sdk-rust/examples/bench-host.rs), built by the harness with cargo
# against the crates rust-deps unpacks; without cargo or those crates that
# row says "not measured" and the rest runs. `BENCH_JSON=FILE make bench`
# also writes the results as JSON to FILE (the harness's -json; the format
# is in bench/main.go's package comment).
BENCH_JSON ?=
bench: deps build
	@if [ -x "$(CARGO)" ]; then $(MAKE) --no-print-directory rust-deps || echo "bench: make rust-deps failed: the Rust host's row will say why"; fi
	cd bench && CARGO="$(CARGO)" RUST_VENDOR="$(RUST_VENDOR)" $(GO) run $(GOFLAGS_BUILD) . $(if $(BENCH_JSON),-json "$(abspath $(BENCH_JSON))")

# bench-callgrind counts the instructions of one hooked call on a direct
# lane, host side (sdk-go/host) and plugin side (sdk-go/plugin), under
# valgrind --tool=callgrind: the bench harness's callgrind section, run
# alone (a few minutes; see bench/callgrind.go). It needs valgrind
# (apt-get install valgrind); BENCH_JSON works as for bench.
.PHONY: bench-callgrind
bench-callgrind: deps build
	@command -v valgrind >/dev/null || { echo "bench-callgrind: valgrind is not installed (apt-get install valgrind)"; exit 1; }
	cd bench && $(GO) run $(GOFLAGS_BUILD) . -only callgrind $(if $(BENCH_JSON),-json "$(abspath $(BENCH_JSON))")

# bench-go runs the Go benchmarks (func Benchmark… in *_test.go, found in
# every module: the daemon's, sdk-go and bench) with -benchmem,
# BENCH_COUNT times each (default 6), and writes go test's output, one
# module after the other, to BENCH_GO_OUT (default bin/bench-go.txt), the
# format benchstat reads; BENCH_TIME sets -benchtime. To compare two commits,
# run it on each and give the files to benchstat
# (go install golang.org/x/perf/cmd/benchstat@latest):
#   make bench-go BENCH_GO_OUT=/tmp/old.txt   # on the old commit
#   make bench-go BENCH_GO_OUT=/tmp/new.txt   # on the new one
#   benchstat /tmp/old.txt /tmp/new.txt
BENCH_COUNT  ?= 6
BENCH_GO_OUT ?= $(BIN)/bench-go.txt
BENCH_TIME   ?=
bench-go: deps build
	@out="$(abspath $(BENCH_GO_OUT))"; mkdir -p "$$(dirname "$$out")" && : > "$$out" || exit 1; \
	all=$$(grep -rl --include='*_test.go' --exclude-dir=.git --exclude-dir=bin --exclude-dir=sdk-rust --exclude-dir=testdata -e '^func Benchmark' . | sed 's|/[^/]*$$||' | sort -u); \
	for mod in . sdk-go bench; do \
		pkgs=""; \
		for d in $$all; do \
			case $$d in ./sdk-go|./sdk-go/*) m=sdk-go;; ./bench|./bench/*) m=bench;; *) m=.;; esac; \
			[ "$$m" = "$$mod" ] || continue; \
			if [ "$$mod" = . ]; then pkgs="$$pkgs $$d"; else pkgs="$$pkgs .$${d#./$$mod}"; fi; \
		done; \
		[ -n "$$pkgs" ] || continue; \
		echo "bench-go: module $$mod:$$pkgs"; \
		( cd $$mod && $(GO) test $(GOFLAGS_BUILD) -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) $(if $(BENCH_TIME),-benchtime $(BENCH_TIME)) -timeout 60m $$pkgs; echo $$? > "$$out.rc" ) | tee -a "$$out"; \
		rc=$$(cat "$$out.rc"); rm -f "$$out.rc"; \
		if [ "$$rc" != 0 ]; then echo "bench-go: go test failed in module $$mod (exit $$rc)"; exit 1; fi; \
	done; \
	echo "bench-go: wrote $$out (compare two with benchstat old.txt new.txt)"

# install puts the binaries, the systemd units, the sysusers.d entry of the
# sockets' group, the default config and the systemd guide in place, under
# DESTDIR for packaging. Units go to /etc/systemd/system (local units);
# packages set UNITDIR=/lib/systemd/system PREFIX=/usr. An existing
# config.toml is kept. See docs/operate-systemd.md.
PREFIX      ?= /usr/local
DESTDIR     ?=
UNITDIR     ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
CONFDIR     ?= /etc/dimplugd
SYSTEMD_SRC := $(CURDIR)/cmd/dimplugd/systemd

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(CONFDIR) $(DESTDIR)$(PREFIX)/share/doc/dimplugd
	install -m 0755 $(BIN)/dimplugd $(BIN)/dimplugctl $(BIN)/dimplugd-conformance-plugin $(DESTDIR)$(PREFIX)/bin/
	for u in dimplugd.service dimplugd.socket; do \
		sed 's|/usr/local|$(PREFIX)|g' $(SYSTEMD_SRC)/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 $(SYSTEMD_SRC)/dimplugd.sysusers $(DESTDIR)$(SYSUSERSDIR)/dimplugd.conf
	install -m 0644 docs/operate-systemd.md $(DESTDIR)$(PREFIX)/share/doc/dimplugd/
	@if [ -e $(DESTDIR)$(CONFDIR)/config.toml ]; then \
		echo "keeping $(DESTDIR)$(CONFDIR)/config.toml"; \
	else \
		install -m 0644 $(SYSTEMD_SRC)/config.toml $(DESTDIR)$(CONFDIR)/config.toml; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemd-sysusers $(SYSUSERSDIR)/dimplugd.conf && systemctl daemon-reload; \
		echo "installed; start with: systemctl enable --now dimplugd.socket dimplugd.service"; \
	fi

clean: rust-clean
	rm -rf $(BIN)
	@for p in $(EXAMPLE_PLUGINS); do rm -f examples/plugins/$$p/$$p; done

# The Rust host crate (sdk-rust/): rust-deps, rust-build, rust-test,
# rust-lock, rust-clean. Last, so that none of its rules is the default.
include sdk-rust/rust.mk
