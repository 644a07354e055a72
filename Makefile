# Entry points named by the README. Everything builds with one profile
# (release) into one target dir, so tests reuse the binaries they exercise.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/bulkhead/target
BIN := $(CARGO_TARGET_DIR)/release

# The shipped binaries that run where libraries are scarce or costly are
# static glibc: the agent (PID 1 in guests with no libraries), the VMM (no
# dynamic loading at start, ~1 MiB less resident; its jail holds no
# libraries) and the jailer (~0.7 ms less per VM start). GNU ld (not lld) is
# used because only it reports glibc's "statically linked applications
# requires at runtime the shared libraries" warnings, which linker-messages
# turns into errors; fat LTO drops unreachable code first, so only calls the
# code really makes (getpwnam, getaddrinfo, ...) fail the build. They land in
# $(CARGO_TARGET_DIR)/$(STATIC_TARGET)/release; `make build` also builds the
# whole workspace the usual way for the tests.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C linker-features=-lld -D linker-messages

.PHONY: all build build-deps static agent kernel demo test bench clippy lint packages
all: build

build: static build-deps
	cargo build --release --workspace

# etcd-client (the control plane's etcd store) generates its gRPC code at
# build time: it needs protoc and the standard .proto files.
build-deps:
	@missing=""; for p in protobuf-compiler libprotobuf-dev; do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q ' installed$$' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (the etcd client's build needs protoc)"; \
		apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

# Debug info is stripped (symbols stay, so the VMM's and the jailer's
# backtraces still name functions; the agent drops its symbols too, see
# Cargo.toml): the agent goes into every guest's initramfs, 1.7 MB not 5.6.
static:
	CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_STRIP=debuginfo RUSTFLAGS="$(STATIC_RUSTFLAGS)" \
		cargo build --release --target $(STATIC_TARGET) -p bulkhead-agent -p bulkhead-vmm -p bulkhead-jailer

agent: static


kernel: build
	$(BIN)/bulkhead kernel build

# The main job: build the guest kernel, the agent and the VMM, make a demo
# image from busybox-static, run it with `bulkhead run` in a microVM (in the
# nested test host where /dev/kvm cannot boot Linux) and as a container.
demo: kernel
	scripts/demo

# Every package the tests use is installed first (one list,
# scripts/packages): tests never race apt. The rootless image test runs as
# the unprivileged user setup-test-user creates.
test: packages kernel
	tests/setup-test-user
	cargo test --release --workspace

packages:
	scripts/install-packages

# VMM boot benchmark with a tiny guest on this host's /dev/kvm; root disk
# build of a generated ~100 MB image (root: unpacking keeps owners); the
# hot paths (criterion): virtio-blk requests, vsock packets, frame codec;
# the orchestrator's scheduler: 100k instances on 1k simulated nodes.
bench: static
	cargo bench -p bulkhead-vmm --bench boot
	cargo bench -p bulkhead-images --bench rootdisk
	cargo bench -p bulkhead-vmm --bench queues
	cargo bench -p bulkhead-agent-proto --bench frame
	cargo bench -p bulkhead --bench schedule

clippy: build-deps
	cargo clippy --release --workspace --all-targets -- -D warnings

# Format, unused and duplicate dependencies, licenses, sources, layers.
# Offline: the advisory database cannot be fetched on CI machines.
lint:
	cargo fmt --all --check
	PATH="$$(scripts/lint-tools):$$PATH" cargo machete
	PATH="$$(scripts/lint-tools):$$PATH" cargo deny --offline check bans licenses sources
	scripts/check-layers
	@long=$$(find . -name '*.rs' -not -path './target/*' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 800'); \
	if [ -n "$$long" ]; then echo "files over 800 lines (split them):"; echo "$$long"; exit 1; fi
