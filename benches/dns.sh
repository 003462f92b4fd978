#!/usr/bin/env bash
# Beacon's DNS against NSD, side by side, with dnsperf. One command:
#
#   benches/dns.sh            # full run (about 15 minutes), writes benches/RESULTS.md
#   benches/dns.sh --quick    # a 2-second smoke run of every step (does not write RESULTS.md)
#
# Needs root for apt-get (when dnsperf, nsd or dig are missing) and for the cgroup CPU cap of the
# overload step. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v nsd >/dev/null || missing+=(nsd)
command -v dig >/dev/null || missing+=(dnsutils)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package starts a system NSD on port 53; it is not ours and not needed.
if command -v systemctl >/dev/null && systemctl is-active --quiet nsd 2>/dev/null; then
    systemctl stop nsd || true
fi

cargo build --release --locked --bin beacon
exec python3 benches/dns_bench.py "$@"
