#!/usr/bin/env bash
# DNS on client agents from streamed views: health change → DNS on 10 client agents, and a
# client agent's DNS throughput against a server's (dnsperf). One command:
#
#   benches/client_dns.sh            # full run (about 9 minutes); paste its tables into RESULTS.md
#   benches/client_dns.sh --quick    # a smoke run of every step
#
# Needs root for apt-get when dnsperf or dig are missing. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v dig >/dev/null || missing+=(dnsutils)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --locked --bin beacon
exec python3 benches/client_dns.py "$@"
