#!/usr/bin/env python3
"""Beacon's DNS against NSD with dnsperf, side by side, on the same data, cores and run.

Run through `benches/dns.sh` (it installs the tools and builds Beacon). Steps:

1. Start `beacon agent --dev` pinned to core 0, register SERVICES x 5 instances over HTTP, and
   write the same records as a zone file for NSD (also pinned to core 0, run in turn).
2. Check a sample of answers from both servers against the generated data.
3. For each load, alternate Beacon and NSD for ROUNDS rounds, dnsperf pinned to core 1; record
   queries/s, latency (average; p99 from dnsperf's per-query log on verbose runs), lost queries and
   the server's CPU time (from /proc) per query. Report medians and the Beacon/NSD ratio.
4. A second data set of 100k instances: queries/s and Beacon's memory.
5. Overload: Beacon capped by a cgroup CPU quota, dnsperf at full rate.
6. Scaling: one receive loop against two, when Beacon may use both cores.
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEACON = os.path.join(ROOT, "target", "release", "beacon")
TICKS = os.sysconf("SC_CLK_TCK")
INSTANCES = 5


def free_port():
    """A port free for both UDP and TCP on loopback."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue


def address(service, instance):
    return f"10.{(service >> 8) & 255}.{service & 255}.{instance + 1}"


def hex_ip(ip):
    return "".join(f"{int(part):02x}" for part in ip.split("."))


def port_of(instance):
    return 20000 + instance


class Process:
    def __init__(self, args, cpus, log):
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpus] + args, stdout=log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def dig(port, name, qtype):
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+short", "+tries=3", "+time=2"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def wait_until(what, check, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


class Beacon:
    name = "Beacon"

    def __init__(self, work, cpus="0", workers=0):
        self.dir = tempfile.mkdtemp(dir=work, prefix="beacon-")
        self.dns = free_port()
        self.http = free_port()
        config = os.path.join(self.dir, "beacon.toml")
        with open(config, "w") as f:
            f.write(f"[dns_config]\nudp_workers = {workers}\n")
        log = open(os.path.join(self.dir, "beacon.log"), "w")
        self.process = Process(
            [BEACON, "agent", "--dev", "--node", "bench", "--log-level", "warn",
             "--dns-addr", f"127.0.0.1:{self.dns}", "--http-addr", f"127.0.0.1:{self.http}",
             "--data-dir", os.path.join(self.dir, "data"), "--config", config],
            cpus,
            log,
        )
        wait_until("beacon's leader", lambda: http(self.http, "GET", "/v1/status/leader") != '""')

    def register(self, services):
        def one(job):
            s, i = job
            http(self.http, "PUT", "/v1/agent/service/register", {
                "Name": f"svc{s}", "ID": f"svc{s}-{i}",
                "Address": address(s, i), "Port": port_of(i),
            })

        jobs = [(s, i) for s in range(services) for i in range(INSTANCES)]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(one, jobs))

    def metric(self, name):
        text = http(self.http, "GET", "/v1/agent/metrics?format=prometheus")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return int(line.split()[-1])
        return 0

    def stop(self):
        self.process.stop()


class Nsd:
    name = "NSD"

    def __init__(self, work, services):
        self.dir = tempfile.mkdtemp(dir=work, prefix="nsd-")
        self.dns = free_port()
        with open(os.path.join(self.dir, "consul.zone"), "w") as f:
            f.write(zone(services))
        config = os.path.join(self.dir, "nsd.conf")
        with open(config, "w") as f:
            f.write(
                "server:\n"
                f"  ip-address: 127.0.0.1@{self.dns}\n"
                "  server-count: 1\n"
                "  username: \"\"\n"
                "  chroot: \"\"\n"
                f"  zonesdir: \"{self.dir}\"\n"
                "  database: \"\"\n"
                f"  zonelistfile: \"{self.dir}/zone.list\"\n"
                f"  xfrdfile: \"{self.dir}/xfrd.state\"\n"
                f"  xfrdir: \"{self.dir}\"\n"
                f"  pidfile: \"{self.dir}/nsd.pid\"\n"
                f"  logfile: \"{self.dir}/nsd.log\"\n"
                "  verbosity: 0\n"
                "  hide-version: yes\n"
                # Response-rate limiting would drop most of a benchmark's queries.
                "  rrl-ratelimit: 0\n"
                "remote-control:\n"
                "  control-enable: no\n"
                "zone:\n"
                "  name: consul.\n"
                "  zonefile: consul.zone\n"
            )
        log = open(os.path.join(self.dir, "nsd.out"), "w")
        self.process = Process(["nsd", "-d", "-c", config], "0", log)
        wait_until("nsd", lambda: dig(self.dns, "svc0.service.consul", "A"))

    def cpu_seconds(self):
        return sum(tree_cpu(self.process.pid))

    def stop(self):
        self.process.stop()


def process_tree(pid):
    """pid and all its descendants (NSD serves from forked children)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def tree_cpu(pid):
    """CPU seconds of each process of the tree."""
    out = []
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / TICKS)
        except OSError:
            pass
    return out


def tree_rss_mb(pid):
    total = 0.0
    for p in process_tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def zone(services):
    lines = [
        "$ORIGIN consul.",
        "$TTL 0",
        "@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0",
        "@ IN NS ns.consul.",
        "ns IN A 127.0.0.1",
    ]
    for s in range(services):
        for i in range(INSTANCES):
            ip = address(s, i)
            target = f"{hex_ip(ip)}.addr.dc1"
            lines.append(f"svc{s}.service IN A {ip}")
            lines.append(f"_svc{s}._tcp.service IN SRV 1 1 {port_of(i)} {target}")
            lines.append(f"{target} IN A {ip}")
    return "\n".join(lines) + "\n"


def check_answers(servers, services, sample=25):
    rng = random.Random(7)
    for s in rng.sample(range(services), min(sample, services)):
        want_a = sorted(address(s, i) for i in range(INSTANCES))
        want_srv = sorted(
            f"1 1 {port_of(i)} {hex_ip(address(s, i))}.addr.dc1.consul." for i in range(INSTANCES)
        )
        for server in servers:
            got_a = dig(server.dns, f"svc{s}.service.consul", "A")
            got_srv = dig(server.dns, f"_svc{s}._tcp.service.consul", "SRV")
            if got_a != want_a or got_srv != want_srv:
                sys.exit(f"{server.name} answers svc{s} wrongly: {got_a} {got_srv}")


def query_file(work, services):
    path = os.path.join(work, f"queries-{services}.txt")
    lines = []
    for s in range(services):
        lines.append(f"svc{s}.service.consul A")
        lines.append(f"_svc{s}._tcp.service.consul SRV")
    random.Random(1).shuffle(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def dnsperf(server, queries, seconds, flags, verbose):
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(server.dns),
           "-d", queries, "-l", str(seconds)] + flags
    if verbose:
        cmd.append("-v")
    log_path = os.path.join(tempfile.gettempdir(), f"dnsperf-{os.getpid()}.log")
    cpu_before = server.cpu_seconds() if isinstance(server, Nsd) else server.process.cpu_seconds()
    wall = time.time()
    with open(log_path, "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.time() - wall
    cpu = (server.cpu_seconds() if isinstance(server, Nsd) else server.process.cpu_seconds()) - cpu_before
    stats, latencies = parse_dnsperf(log_path, verbose)
    os.unlink(log_path)
    run_time = stats["run_time"] or wall
    result = {
        "qps": stats["qps"],
        "avg_ms": stats["avg"] * 1000,
        "lost": stats["lost"],
        "sent": stats["sent"],
        "completed": stats["completed"],
        # dnsperf's run time: the server's CPU over the same window, as % of one core.
        "cpu_pct": 100 * cpu / run_time,
        "cpu_us_per_query": 1e6 * cpu / max(stats["completed"], 1),
        "p99_ms": None,
    }
    if latencies:
        latencies.sort()
        result["p99_ms"] = 1000 * latencies[int(len(latencies) * 0.99) - 1]
    return result


def parse_dnsperf(path, verbose):
    stats = {"qps": 0.0, "avg": 0.0, "lost": 0, "sent": 0, "completed": 0, "run_time": 0.0}
    latencies = []
    number = re.compile(r"([0-9.]+)")
    with open(path) as f:
        for line in f:
            if verbose and line.startswith("> "):
                try:
                    latencies.append(float(line.rsplit(None, 1)[1]))
                except (ValueError, IndexError):
                    pass
                continue
            line = line.strip()
            for key, label in (("sent", "Queries sent:"), ("completed", "Queries completed:"),
                               ("lost", "Queries lost:")):
                if line.startswith(label):
                    stats[key] = int(number.search(line[len(label):]).group(1))
            if line.startswith("Queries per second:"):
                stats["qps"] = float(line.split(":")[1])
            if line.startswith("Average Latency (s):"):
                stats["avg"] = float(number.search(line.split(":", 1)[1]).group(1))
            if line.startswith("Run time (s):"):
                stats["run_time"] = float(line.split(":")[1])
    return stats, latencies


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else f"{v:,}"


def compare(servers, loads, queries, rounds, seconds, log):
    """Alternates the servers per load; returns {load: {server: [results]}}."""
    results = {name: {s.name: [] for s in servers} for name, _, _ in loads}
    for r in range(rounds):
        order = servers if r % 2 == 0 else list(reversed(servers))
        for name, flags, verbose in loads:
            for server in order:
                res = dnsperf(server, queries, seconds, flags, verbose)
                results[name][server.name].append(res)
                log(f"  round {r + 1} {name:<28} {server.name:<6} {res['qps']:>10,.0f} q/s "
                    f"avg {res['avg_ms']:.3f} ms p99 {fmt(res['p99_ms'], 3)} ms "
                    f"lost {res['lost']} cpu {res['cpu_pct']:.0f}% "
                    f"{res['cpu_us_per_query']:.2f} us/q")
    return results


def compare_and_report(servers, loads, queries, args, log):
    results = compare(servers, loads, queries, args.rounds, args.seconds, log)
    rows, ratios = table(results, servers)
    log("")
    log(rows)
    log("")
    log(ratios)
    log("")


def table(results, servers):
    b, n = servers[0].name, servers[1].name
    rows = [
        "| load | server | queries/s | avg latency ms | p99 ms | lost | server CPU % | CPU µs/query |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = [
        "| load | queries/s Beacon/NSD | p99 Beacon/NSD | CPU per query Beacon/NSD |",
        "|---|---:|---:|---:|",
    ]
    for load, per_server in results.items():
        med = {}
        for name, runs in per_server.items():
            med[name] = {k: median([run[k] for run in runs])
                         for k in ("qps", "avg_ms", "p99_ms", "lost", "cpu_pct", "cpu_us_per_query")}
            m = med[name]
            rows.append(f"| {load} | {name} | {fmt(m['qps'], 0)} | {fmt(m['avg_ms'], 3)} | "
                        f"{fmt(m['p99_ms'], 3)} | {fmt(m['lost'], 0)} | {fmt(m['cpu_pct'], 0)} | "
                        f"{fmt(m['cpu_us_per_query'], 2)} |")

        def ratio(key):
            x, y = med[b][key], med[n][key]
            return f"{x / y:.2f}" if x is not None and y else "–"

        ratios.append(f"| {load} | {ratio('qps')} | {ratio('p99_ms')} | {ratio('cpu_us_per_query')} |")
    return "\n".join(rows), "\n".join(ratios)


def cgroup_cap(pid, quota_us, period_us):
    """Moves every thread of pid into a new cgroup with a CPU quota (cgroup v2 `cpu.max`, else
    v1 `cpu.cfs_*`; the kernel's smallest quota is 1 ms). Returns a function that undoes it."""
    v2 = "/sys/fs/cgroup/cgroup.controllers"
    if os.path.exists(v2) and "cpu" in open(v2).read():
        parent = "/sys/fs/cgroup"
        path = f"{parent}/beacon-bench-{pid}"
        os.makedirs(path, exist_ok=True)
        open(f"{path}/cpu.max", "w").write(f"{quota_us} {period_us}")
        members = "cgroup.procs"
    else:
        parent = "/sys/fs/cgroup/cpu"
        path = f"{parent}/beacon-bench-{pid}"
        os.makedirs(path, exist_ok=True)
        open(f"{path}/cpu.cfs_period_us", "w").write(str(period_us))
        open(f"{path}/cpu.cfs_quota_us", "w").write(str(quota_us))
        members = "tasks"
    ids = [str(pid)] if members == "cgroup.procs" else os.listdir(f"/proc/{pid}/task")
    for i in ids:
        with open(f"{path}/{members}", "w") as f:
            f.write(i)

    def cleanup():
        ids = [str(pid)] if members == "cgroup.procs" else os.listdir(f"/proc/{pid}/task")
        for i in ids:
            try:
                with open(f"{parent}/{members}", "w") as f:
                    f.write(i)
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError:
            pass

    return cleanup


def throttled(pid):
    """(periods, throttled periods) of the cgroup pid is in, when it has a CPU quota."""
    for stat in (f"/sys/fs/cgroup/beacon-bench-{pid}/cpu.stat",
                 f"/sys/fs/cgroup/cpu/beacon-bench-{pid}/cpu.stat"):
        if os.path.exists(stat):
            fields = dict(line.split() for line in open(stat))
            return int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0))
    return 0, 0


def query_latency_ms(port, name):
    """One A query over UDP from a plain socket: (round trip in ms, answered?)."""
    packet = bytearray(random.randbytes(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    for label in name.split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        start = time.perf_counter()
        sock.sendto(bytes(packet), ("127.0.0.1", port))
        try:
            reply, _ = sock.recvfrom(4096)
        except socket.timeout:
            return 2000.0, False
        elapsed = (time.perf_counter() - start) * 1000
    answered = reply[:2] == packet[:2] and int.from_bytes(reply[6:8], "big") > 0
    return elapsed, answered


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2-second runs, small data, no RESULTS.md")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--large-services", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if args.quick:
        args.services, args.large_services, args.seconds = 100, 400, 2
    work = tempfile.mkdtemp(prefix="beacon-dns-bench-")
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), "unknown")
    log(f"# DNS benchmark: Beacon against NSD\n")
    help_text = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    version = re.search(r"Version ([0-9.]+)", help_text.stdout + help_text.stderr)
    nsd_version = subprocess.run(["nsd", "-v"], capture_output=True, text=True).stderr.splitlines()[0]
    log(f"Run {started} on {os.cpu_count()} cores ({cpu_model}); "
        f"dnsperf {version.group(1) if version else '?'}, {nsd_version}.\n")
    log("Reproduce: `benches/dns.sh` (add `--quick` for a smoke run).\n")
    log(f"Server pinned to core 0 (`taskset -c 0`), dnsperf to core 1; {args.rounds} rounds, "
        f"Beacon and NSD alternating, {args.seconds} s per run; medians of the rounds. Query mix: "
        f"`svcN.service.consul A` and `_svcN._tcp.service.consul SRV`, 50/50, over all services.\n")

    servers = []
    try:
        # === 1000 x 5 ===
        log(f"## {args.services} services x {INSTANCES} instances\n")
        beacon = Beacon(work)
        t = time.time()
        beacon.register(args.services)
        log(f"Registered {args.services * INSTANCES} instances over HTTP in {time.time() - t:.1f} s.")
        nsd = Nsd(work, args.services)
        servers = [beacon, nsd]
        check_answers(servers, args.services)
        log("Sample of 25 services checked on both servers: same A addresses, same SRV ports and targets.\n")
        queries = query_file(work, args.services)
        loads = [
            ("full rate, 10 clients x 100", ["-c", "10", "-q", "100"], False),
            ("full rate, 1 client x 20", ["-c", "1", "-q", "20"], False),
            ("full rate, 10x100, verbose (p99)", ["-c", "10", "-q", "100"], True),
            ("fixed 100k q/s, verbose (p99)", ["-c", "10", "-q", "100", "-Q", "100000"], True),
        ]
        compare_and_report(servers, loads, queries, args, log)
        log("Verbose runs log every query's latency (that is where p99 comes from); the logging "
            "costs dnsperf time, so their queries/s are lower than the plain full-rate runs'.\n")
        dropped = beacon.metric('beacon_dns_udp_dropped_total{reason="overload"}')
        kernel = beacon.metric('beacon_dns_udp_dropped_total{reason="receive_buffer"}')
        log(f"Beacon's own drop counters after these runs: overload {dropped}, receive buffer {kernel}.\n")
        hits = beacon.metric("beacon_dns_udp_cache_hits_total")
        full = beacon.metric("beacon_dns_udp_full_path_total")
        log(f"Beacon answered {hits:,} queries from pre-encoded answers and {full:,} through the "
            f"full handler; RSS {beacon.process.rss_mb():.0f} MB (NSD {tree_rss_mb(nsd.process.pid):.0f} MB).\n")

        # === overload ===
        quota, period = 1000, 4000
        log(f"## Overload: Beacon capped at {100 * quota // period}% of a core\n")
        log(f"cgroup CPU quota {quota} µs per {period} µs period (the kernel's smallest quota is "
            f"1 ms); dnsperf at full rate with up to 100,000 queries outstanding (10 clients x "
            f"10,000, 1 s timeout, verbose), {args.seconds} s.\n")
        rss_before = beacon.process.rss_mb()
        dropped_before = beacon.metric('beacon_dns_udp_dropped_total{reason="overload"}')
        kernel_before = beacon.metric('beacon_dns_udp_dropped_total{reason="receive_buffer"}')
        try:
            cleanup = cgroup_cap(beacon.process.pid, quota, period)
        except OSError as e:
            cleanup = None
            log(f"(no cgroup CPU cap possible here: {e}; skipped)\n")
        if cleanup:
            try:
                res = dnsperf(beacon, queries, args.seconds, ["-c", "10", "-q", "10000", "-t", "1"], True)
                periods, throttled_periods = throttled(beacon.process.pid)
                after = [query_latency_ms(beacon.dns, "svc1.service.consul") for _ in range(20)]
            finally:
                cleanup()
            dropped = beacon.metric('beacon_dns_udp_dropped_total{reason="overload"}') - dropped_before
            kernel = beacon.metric('beacon_dns_udp_dropped_total{reason="receive_buffer"}') - kernel_before
            ok_after = all(ok for _, ok in after)
            log("| offered q/s | answered q/s | p99 of answered, ms | avg ms | lost | dropped by Beacon (overload) | dropped by the kernel (receive buffer) | Beacon CPU % | RSS before → after, MB |")
            log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            log(f"| {res['sent'] / args.seconds:,.0f} | {res['qps']:,.0f} | {fmt(res['p99_ms'], 2)} | "
                f"{res['avg_ms']:.2f} | {res['lost']:,} | {dropped:,} | {kernel:,} | {res['cpu_pct']:.0f} | "
                f"{rss_before:.0f} → {beacon.process.rss_mb():.0f} |")
            log("")
            log(f"The cap was enforced: {throttled_periods:,} of {periods:,} periods throttled.\n")
            log(f"Right after the load (still capped): 20 queries one after another, all answered: "
                f"{ok_after}; median {statistics.median(l for l, _ in after):.2f} ms, "
                f"max {max(l for l, _ in after):.2f} ms.\n")

        beacon.stop()
        nsd.stop()
        servers = []

        # === two cores ===
        log("## Receive loops: one against two (Beacon and dnsperf sharing both cores)\n")
        log("Only two cores here, so dnsperf shares them with Beacon: this shows whether a second "
            "`SO_REUSEPORT` loop adds throughput, not the scaling of a bigger machine.\n")
        log("| receive loops | queries/s (median) |")
        log("|---:|---:|")
        for workers in (1, 2):
            b = Beacon(work, cpus="0,1", workers=workers)
            b.register(min(args.services, 200))
            q = query_file(work, min(args.services, 200))
            runs = []
            for _ in range(args.rounds):
                cmd_flags = ["-c", "10", "-q", "100", "-T", "2"]
                runs.append(dnsperf_any_core(b, q, args.seconds, cmd_flags))
            log(f"| {workers} | {statistics.median(runs):,.0f} |")
            b.stop()
        log("")

        # === 100k instances ===
        log(f"## {args.large_services} services x {INSTANCES} instances\n")
        beacon = Beacon(work)
        t = time.time()
        beacon.register(args.large_services)
        log(f"Registered {args.large_services * INSTANCES:,} instances over HTTP in {time.time() - t:.0f} s; "
            f"Beacon RSS {beacon.process.rss_mb():.0f} MB before queries.")
        nsd = Nsd(work, args.large_services)
        servers = [beacon, nsd]
        check_answers(servers, args.large_services)
        queries = query_file(work, args.large_services)
        compare_and_report(servers, loads[:1], queries, args, log)
        log(f"After the runs: Beacon RSS {beacon.process.rss_mb():.0f} MB, NSD "
            f"{tree_rss_mb(nsd.process.pid):.0f} MB.\n")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    if not args.quick:
        with open(os.path.join(ROOT, "benches", "RESULTS.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("wrote benches/RESULTS.md")


def dnsperf_any_core(server, queries, seconds, flags):
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.dns), "-d", queries,
           "-l", str(seconds)] + flags
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Queries per second:\s+([0-9.]+)", out)
    return float(match.group(1)) if match else 0.0


if __name__ == "__main__":
    main()
