#!/usr/bin/env bash
# The long fault run (issue 17): the CI fault test (tests/faults.rs) with 100 leader kills and 20
# faults of every other kind (about 10 minutes), then the crash loop (tests/crash_loop.rs) with
# 100 leader kills under write load, both on a release build. Prints each run's summary lines;
# the full output is kept in target/faults-long.log and target/crash-loop-long.log.
#
#   benches/faults.sh                 # LEADER_KILLS=100 PER_KIND=20 CRASH_CYCLES=100
#   BEACON_FAULT_SEED=123 benches/faults.sh   # replay a schedule
#
# Needs root, iproute2 and nftables, as the test does.
set -euo pipefail
cd "$(dirname "$0")/.."
export BEACON_LEADER_KILLS="${LEADER_KILLS:-100}"
export BEACON_FAULTS_PER_KIND="${PER_KIND:-20}"
export BEACON_CRASH_CYCLES="${CRASH_CYCLES:-100}"
mkdir -p target
status=0
cargo test --release --test faults -- --nocapture kv_is_linearizable 2>&1 \
    | tee target/faults-long.log \
    | grep -E '^(fault schedule|[0-9.]+s: |reads:|DNS:|locks:|key |lock |test result)|^ *[0-9.]+s (killed|paused|isolated|split|bridge)' || status=1
cargo test --release --test crash_loop -- --nocapture 2>&1 \
    | tee target/crash-loop-long.log \
    | grep -E 'writes acknowledged|test result' || status=1
grep -q "test result: ok" target/faults-long.log && grep -q "test result: ok" target/crash-loop-long.log \
    || status=1
exit $status
