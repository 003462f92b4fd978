#!/usr/bin/env python3
"""DNS on client agents, answered from streamed views: 3 servers and 10 client agents, real
processes on loopback, one run.

Run through `benches/client_dns.sh` (it installs dnsperf and dig and builds Beacon). Steps:

1. Health change -> DNS on every client agent: `web` has two instances on two external nodes;
   every client agent resolves `web.service.consul A` (so each holds a view of it). The check of
   the second instance flips FLIPS times (critical, passing, ...) through the leader's
   `/v1/catalog/register`; after each flip the client agents are polled (one UDP query to each
   every POLL_MS) until every one answers with the new number of addresses. Reported: the time
   from the leader's acknowledgement (the HTTP reply) to the last client agent answering the new
   set, and from the call itself; p50/p99/max over the flips.
2. Throughput: the same catalog (SERVICES services x 5 instances) on a server and a client agent;
   dnsperf against each in turn, alternating for ROUNDS rounds, target pinned to core 0 (the
   other two servers to core 1, with dnsperf; the other client agents stopped); medians and the
   client/server ratio.
"""

import argparse
import os
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dns_bench  # noqa: E402  (the NSD benchmark's helpers: processes, dnsperf, medians)
from dns_bench import BEACON, Process, compare, fmt, free_port, http, median, wait_until  # noqa: E402

CLIENTS = 10
POLL_MS = 1


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        return u.getsockname()[1]


class Agent:
    """One `beacon agent` process: a server (with `rpc`) or a client agent."""

    def __init__(self, work, name, join, server):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.dns = free_port()
        self.http = free_port()
        self.serf = free_udp_port()
        self.rpc = free_port() if server else None
        self.args = [BEACON, "agent", "--node", name, "--log-level", "warn",
                     "--data-dir", os.path.join(self.dir, "data"),
                     "--serf-lan-addr", f"127.0.0.1:{self.serf}",
                     "--dns-addr", f"127.0.0.1:{self.dns}",
                     "--http-addr", f"127.0.0.1:{self.http}"]
        if server:
            self.args += ["--server", "--rpc-addr", f"127.0.0.1:{self.rpc}",
                          "--bootstrap-expect", "3"]
        for j in join:
            self.args += ["--retry-join", j]
        self.log = open(os.path.join(self.dir, "beacon.log"), "w")
        self.process = Process(self.args, "0,1", self.log)

    def pin(self, cpus):
        subprocess.run(["taskset", "-a", "-pc", cpus, str(self.process.pid)],
                       check=True, capture_output=True)

    def stop(self):
        self.process.stop()


def query(name, qid, qtype=1):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack(">HH", qtype, 1)


def answers(reply):
    """(rcode, answer count) of a DNS reply."""
    return reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]


def ask(port, name, timeout=2.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query(name, 7), ("127.0.0.1", port))
        return answers(s.recv(4096))


def instance(node, ip, status):
    return {"Node": node, "Address": ip,
            "Service": {"ID": f"web-{node}", "Service": "web", "Port": 80},
            "Check": {"CheckID": f"web-{node}", "Name": "web", "Status": status,
                      "ServiceID": f"web-{node}"}}


def leader_of(servers):
    rpc = http(servers[0].http, "GET", "/v1/status/leader").strip('"\n ')
    return next(s for s in servers if rpc.endswith(f":{s.rpc}"))


def until_all(clients, sock, want, deadline):
    """Polls every client agent until each answers `want` addresses; the time the last did."""
    pending = {c.dns: c for c in clients}
    qid = random.randrange(1 << 16)
    last = None
    while pending:
        now = time.monotonic()
        if now > deadline:
            sys.exit(f"clients {sorted(c.name for c in pending.values())} never answered {want}")
        qid = (qid + 1) & 0xFFFF
        packet = query("web.service.consul", qid)
        for port in pending:
            sock.sendto(packet, ("127.0.0.1", port))
        end = now + POLL_MS / 1000
        while pending:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            reply, (_, port) = sock.recvfrom(4096)
            seen = time.monotonic()
            if port in pending and answers(reply) == (0, want):
                del pending[port]
                last = seen
    return last


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100 * len(values))) - 1))]


def health_to_dns(servers, clients, flips, log):
    leader = leader_of(servers)
    for node, ip in (("ext1", "10.1.0.1"), ("ext2", "10.1.0.2")):
        http(leader.http, "PUT", "/v1/catalog/register", instance(node, ip, "passing"))
    for c in clients:
        wait_until(f"web on {c.name}", lambda c=c: ask(c.dns, "web.service.consul") == (0, 2))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    from_ack, from_call = [], []
    for i in range(flips):
        status, want = ("critical", 1) if i % 2 == 0 else ("passing", 2)
        called = time.monotonic()
        http(leader.http, "PUT", "/v1/catalog/register", instance("ext2", "10.1.0.2", status))
        acked = time.monotonic()
        last = until_all(clients, sock, want, acked + 10)
        from_ack.append(max(0.0, (last - acked) * 1000))
        from_call.append((last - called) * 1000)
        time.sleep(0.02)
    sock.close()
    log(f"| | p50 ms | p99 ms | max ms |")
    log(f"|---|---:|---:|---:|")
    for label, v in (("leader's ack → last client agent's DNS", from_ack),
                     ("check call → last client agent's DNS", from_call)):
        log(f"| {label} | {pct(v, 50):.1f} | {pct(v, 99):.1f} | {max(v):.1f} |")
    log("")
    return pct(from_ack, 99)


def throughput(servers, clients, services, rounds, seconds, work, log):
    leader = leader_of(servers)
    for s in range(services):
        for i in range(dns_bench.INSTANCES):
            http(leader.http, "PUT", "/v1/catalog/register", {
                "Node": f"n{s}-{i}", "Address": dns_bench.address(s, i),
                "Service": {"ID": f"svc{s}-{i}", "Service": f"svc{s}",
                            "Port": dns_bench.port_of(i)}})
    server, client = servers[0], clients[0]
    # Every name asked once on the client first, so its views exist before dnsperf runs.
    for s in range(services):
        name = f"svc{s}.service.consul"
        for agent in (client, server):
            wait_until(f"{name} on {agent.name}",
                       lambda a=agent, n=name: ask(a.dns, n) == (0, dns_bench.INSTANCES))
    queries = dns_bench.query_file(work, services)
    # The other client agents only add noise on dnsperf's core now.
    for c in clients[1:]:
        c.stop()
    for a in servers + [client]:
        a.pin("1")
    server.pin("0")
    client.pin("0")
    server.name, client.name = "server", "client"
    loads = [
        ("full rate, 10 clients x 100", ["-c", "10", "-q", "100"], False),
        ("fixed 50k q/s, verbose (p99)", ["-c", "10", "-q", "100", "-Q", "50000"], True),
    ]
    results = compare([server, client], loads, queries, rounds, seconds, log)
    log("")
    log("| load | agent | queries/s | avg latency ms | p99 ms | lost | CPU % | CPU µs/query |")
    log("|---|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for load, per in results.items():
        med = {}
        for name, runs in per.items():
            med[name] = {k: median([r[k] for r in runs])
                         for k in ("qps", "avg_ms", "p99_ms", "lost", "cpu_pct", "cpu_us_per_query")}
            m = med[name]
            log(f"| {load} | {name} | {fmt(m['qps'], 0)} | {fmt(m['avg_ms'], 3)} | "
                f"{fmt(m['p99_ms'], 3)} | {fmt(m['lost'], 0)} | {fmt(m['cpu_pct'], 0)} | "
                f"{fmt(m['cpu_us_per_query'], 2)} |")
        # Each round ran both back to back, so a round's ratio is the fairer pair when the
        # machine's speed drifts between rounds.
        paired = median([c["qps"] / s["qps"] for c, s in zip(per["client"], per["server"])])
        ratios.append((load, med["client"]["qps"] / med["server"]["qps"], paired))
    log("")
    log("| load | queries/s client agent / server: of the medians | median of each round's |")
    log("|---|---:|---:|")
    for load, r, paired in ratios:
        log(f"| {load} | {r:.2f} | {paired:.2f} |")
    log("")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small and short")
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        args.flips, args.services, args.rounds, args.seconds = 10, 20, 1, 2
    work = tempfile.mkdtemp(prefix="beacon-client-dns-")
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log("# DNS on client agents (streamed views)\n")
    log(f"Run {started} on {os.cpu_count()} cores. Reproduce: `benches/client_dns.sh` "
        f"(`--quick` for a smoke run). 3 servers and {CLIENTS} client agents, separate "
        f"`beacon agent` processes on loopback, default settings.\n")
    agents = []
    try:
        servers = []
        for i in range(3):
            join = [f"127.0.0.1:{servers[0].serf}"] if servers else []
            servers.append(Agent(work, f"s{i}", join, True))
            agents.append(servers[-1])
        join = [f"127.0.0.1:{servers[0].serf}"]
        clients = []
        for i in range(CLIENTS):
            clients.append(Agent(work, f"c{i}", join, False))
            agents.append(clients[-1])
        wait_until("a leader", lambda: http(servers[0].http, "GET", "/v1/status/leader") != '""')

        log(f"## Health change → DNS on {CLIENTS} client agents\n")
        log(f"`web` has 2 instances; the check of one flips {args.flips} times through the leader's "
            f"`/v1/catalog/register`; after each flip every client agent is asked "
            f"`web.service.consul A` every {POLL_MS} ms until all answer the new set.\n")
        p99 = health_to_dns(servers, clients, args.flips, log)

        log(f"## Throughput: a client agent against a server\n")
        log(f"{args.services} services x {dns_bench.INSTANCES} instances; query mix as "
            f"`benches/dns.sh` (A and RFC 2782 SRV, 50/50); agent under test pinned to core 0, "
            f"dnsperf and the 2 other servers to core 1 (the other client agents stopped); "
            f"{args.rounds} rounds alternating, "
            f"{args.seconds} s each; medians.\n")
        throughput(servers, clients, args.services, args.rounds, args.seconds, work, log)
        log(f"Target (issue 15): health change p99 ≤ 100 ms (got {p99:.1f}); ratio ≥ 0.95.\n")
    finally:
        for a in agents:
            a.stop()
    print(f"\nlogs and data: {work}")

if __name__ == "__main__":
    main()
