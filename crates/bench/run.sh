#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md: installs what the reference points need (nginx, the
# PostgreSQL server and pgbench) when missing, builds the release binaries, then
# `referral-bench all`. Arguments go to referral-bench, e.g. `crates/bench/run.sh --json` or
# `crates/bench/run.sh` with `read-path` in place of `all`: `crates/bench/run.sh read-path`.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 \
    || need_apt+=(postgresql-contrib)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# The bench starts the release `referral-hub up` as a child process: build both, the hub on its
# own so that it has exactly the features operators build it with (the bench's dependency on the
# test harness would otherwise add opentelemetry_sdk's testing features to it).
cargo build --release -p referral-hub
cargo build --release -p referral-bench
command=all
case "${1:-}" in
    read-path|durable-k|footprint|all) command=$1; shift ;;
esac
exec target/release/referral-bench "$command" "$@"
