#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 120) and reports executions
# and crashes per target; the corpus each run grows is minimised back into fuzz/corpus/<target>
# (`cargo fuzz cmin`). A crash leaves its input in fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ once fixed, and tests/fuzz_corpus.rs replays it for ever.
#
#   benches/fuzz.sh            # all targets, 120 s each
#   SECONDS_EACH=600 benches/fuzz.sh dns_query rpc_frames
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain is stable: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its -Z flags. Builds are optimised with debug assertions (so overflow checks)
# and no sanitizer by default: the code the targets reach has no `unsafe` (only the DNS socket
# syscalls in src/dns/sys.rs have), and an AddressSanitizer build
# takes ~25 min on 2 cores; SANITIZER=address brings it back.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
secs="${SECONDS_EACH:-120}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
flags=(-O --debug-assertions --sanitizer "${SANITIZER:-none}")
cargo fuzz build "${flags[@]}"
printf '%-18s %12s %8s %8s\n' target executions "exec/s" crashes
failed=0
for t in "${targets[@]}"; do
    log="target/fuzz-$t.log"
    mkdir -p target
    if cargo fuzz run "${flags[@]}" "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=1
        failed=1
    fi
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    printf '%-18s %12s %8s %8s\n' "$t" "$execs" "$rate" "$crashes"
    cargo fuzz cmin "${flags[@]}" "$t" >/dev/null 2>&1 || true
    # cmin renames every input to its hash; the hand-made seeds keep their names (the replay
    # test looks for them).
    git checkout -- "corpus/$t"
done
exit $failed
