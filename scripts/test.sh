#!/usr/bin/env bash
# The test command: installs the system packages the tests use, builds the binaries (some
# tests run real agent and controller processes), runs every test of the workspace.
# Run as root: most integration tests need it (namespaces, loop mounts, device nodes) and
# say so and skip otherwise (.ci/run, which calls this, refuses to run without root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
cargo build --workspace --bins
cargo test --workspace "$@"
