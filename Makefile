# Entry points named by the README. Everything builds with one profile
# (release) into one target dir, so tests reuse the binaries they exercise.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/bulkhead/target
BIN := $(CARGO_TARGET_DIR)/release

# The agent runs as PID 1 in guests with no libraries: static glibc. GNU ld
# (not lld) is used because only it reports glibc's "statically linked
# applications requires at runtime the shared libraries" warnings, which
# linker-messages turns into errors; fat LTO drops unreachable code first, so
# only calls the agent really makes (getpwnam, getaddrinfo, ...) fail it.
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_RUSTFLAGS := -C target-feature=+crt-static -C linker-features=-lld -D linker-messages

.PHONY: all build agent kernel demo test clippy
all: build

build: agent
	cargo build --release --workspace

agent:
	CARGO_PROFILE_RELEASE_LTO=fat RUSTFLAGS="$(AGENT_RUSTFLAGS)" \
		cargo build --release --target $(AGENT_TARGET) -p bulkhead-agent

kernel: build
	$(BIN)/bulkhead kernel build

# The main job, for now: build the guest kernel and the agent, boot them.
demo: kernel
	$(BIN)/bulkhead-guest-probe

test: kernel
	cargo test --release --workspace

clippy:
	cargo clippy --release --workspace --all-targets -- -D warnings
