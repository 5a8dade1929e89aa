#!/usr/bin/env bash
# The binaries every benchmark runs, built the one way they all share:
# `backstop` and the S3-protocol server in one cargo invocation with the
# bench-lto profile. (Built on its own, backstop-cli unifies its
# dependencies' features differently, so a script that built only it made
# cargo rebuild most of the tree, ~10 minutes here, and measured a slightly
# different binary than bench/run.sh.)
#
#   bench/build.sh      then target/bench-lto/{backstop,backstop-s3-server}
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile bench-lto --locked -p backstop-cli -p backstop-testkit --bin backstop --bin backstop-s3-server
