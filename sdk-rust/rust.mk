# sdk-rust/rust.mk — the Rust host SDK's targets, for `include sdk-rust/rust.mk`
# from the top Makefile (which defines BIN and GO; defaults below otherwise).
#
#   make rust-deps   unpack the crates from Debian 13's librust-*-dev packages
#                    into $(RUST_VENDOR) (once; sdk-rust/vendor.sh)
#   make rust-build  cargo build of sdk-rust, offline, from that directory
#   make rust-test   cargo test of sdk-rust, after the top Makefile's build;
#                    the integration test runs bin/dimplugd with media-badge
#   make rust-lock   re-resolve Cargo.lock against the vendored crates (after
#                    Debian updated one: the build then says "perhaps a crate
#                    was updated and forgotten to be re-vendored?")
#   make rust-clean  remove the build output (not the vendored crates)
#
# Needs: cargo (rustup's, on PATH or in ~/.cargo/bin), the capnp tool
# (`make deps` installs capnproto), Go, and network access to
# deb.debian.org for rust-deps. crates.io is never contacted.

RUST_DIR    := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
RUST_ROOT   := $(patsubst %/,%,$(dir $(RUST_DIR)))
BIN         ?= $(RUST_ROOT)/bin
GO          ?= go
RUST_VENDOR ?= $(abspath $(BIN))/rust-vendor
CARGO       ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
# The crates-io replacement, as a flag (the same as sdk-rust/.cargo/config.toml
# but with $(RUST_VENDOR)'s absolute path, so BIN and RUST_VENDOR may move).
RUST_CARGO_FLAGS := --offline --config 'source.crates-io.replace-with="debian-vendor"' \
	--config 'source.debian-vendor.directory="$(RUST_VENDOR)/registry"'
RUST_CARGO_TESTFLAGS ?=

# build.rs compiles ../schema/*.capnp; the schemas import only what
# schema/ ships (go.capnp, c++.capnp), so capnp needs no import path.
define rust_env
	export GO="$(GO)";
endef

.PHONY: rust-deps rust-build rust-test rust-lock rust-clean

# vendor.sh is idempotent on its own; the stamp spares make even running it.
$(RUST_VENDOR)/stamp: $(RUST_DIR)/vendor.sh
	bash $(RUST_DIR)/vendor.sh $(RUST_VENDOR)
	@touch $@

rust-deps: $(RUST_VENDOR)/stamp

rust-build: rust-deps
	@$(rust_env) cd $(RUST_DIR) && $(CARGO) build $(RUST_CARGO_FLAGS) --all-targets

# The integration test runs $(BIN)/dimplugd and $(BIN)/dimplugctl, so
# rust-test depends on the top Makefile's build (which also installs the
# Debian packages: capnproto, libseccomp-dev, ...). Building them in the
# test instead takes minutes with a cold Go cache. RUST_TEST_DEPS= skips
# that: the test then builds them itself with go build.
RUST_TEST_DEPS ?= build

rust-test: rust-deps $(RUST_TEST_DEPS)
	@command -v capnp >/dev/null || { echo "rust-test: the capnp tool is missing: make deps (Debian: capnproto)"; exit 1; }
	@$(rust_env) if [ -n "$(RUST_TEST_DEPS)" ] && [ -x "$(BIN)/dimplugd" ] && [ -x "$(BIN)/dimplugctl" ]; then \
		export DIMPLUGD_TEST_BIN="$(abspath $(BIN))"; fi; \
	cd $(RUST_DIR) && $(CARGO) test $(RUST_CARGO_FLAGS) $(RUST_CARGO_TESTFLAGS)

rust-lock: rust-deps
	cd $(RUST_DIR) && $(CARGO) update $(RUST_CARGO_FLAGS)

rust-clean:
	rm -rf $(RUST_DIR)/target
