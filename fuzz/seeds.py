#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into corpus/<target>/seed-*.

The fuzzer grows the corpus from these (`benches/fuzz.sh`); tests/fuzz_corpus.rs replays it.
Needs Python's msgpack package for the server-RPC frames (`pip install msgpack`).
"""
import json
import os
import struct

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def dns(name, qtype, edns=None, qid=0x1234, flags=0x0100):
    q = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    if edns:
        q += b"\x00" + struct.pack(">HHIH", 41, edns, 0, 0)
    return q


A, NS, SOA, PTR, TXT, AAAA, SRV, ANY = 1, 2, 6, 12, 16, 28, 33, 255
for i, (name, qtype, edns) in enumerate([
    ("web.service.consul", A, None),
    ("web.service.consul", SRV, 4096),
    ("primary.web.service.consul", AAAA, 1232),
    ("_web._tcp.service.consul", SRV, None),
    ("n1.node.consul", A, None),
    ("n3.node.dc1.consul", AAAA, 512),
    ("web.service.dc1.consul", TXT, None),
    ("consul", SOA, None),
    ("consul", NS, None),
    ("1.0.0.10.in-addr.arpa", PTR, None),
    ("0a000001.addr.dc1.consul", A, None),
    ("db.query.consul", ANY, None),
    ("example.com", A, None),
]):
    write("dns_query", f"{i:02}", dns(name, qtype, edns))

bodies = {
    "service": {"Name": "web", "ID": "web-1", "Tags": ["a"], "Port": 80, "Meta": {"k": "v"},
                "Weights": {"Passing": 3, "Warning": 1},
                "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "1m"},
                "Checks": [{"HTTP": "http://127.0.0.1/", "Interval": "5s"}]},
    "check": {"Name": "mem", "TTL": "30s", "ServiceID": "web-1", "Status": "passing"},
    "update": {"Status": "warning", "Output": "slow"},
    "catalog": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                "Service": {"Service": "db", "Port": 5432, "Tags": ["p"]},
                "Checks": [{"CheckID": "c", "Name": "c", "Status": "critical"}]},
    "deregister": {"Node": "n1", "ServiceID": "db"},
    "txn": [{"KV": {"Verb": "set", "Key": "a", "Value": "aGk="}},
            {"KV": {"Verb": "cas", "Key": "a", "Index": 3, "Value": ""}},
            {"KV": {"Verb": "get-tree", "Key": "a/"}}],
    "session": {"Name": "s", "TTL": "15s", "LockDelay": "1s", "Behavior": "delete",
                "NodeChecks": [], "ServiceChecks": [{"ID": "web-1"}]},
    "backup": {"Version": 1, "Catalog": {}},
}
for name, body in bodies.items():
    write("http_body", name, json.dumps(body))

write("config_file", "json", b"\x00" + json.dumps({
    "datacenter": "dc2", "node_name": "a", "server": True, "bootstrap_expect": 3,
    "retry_join": ["10.0.0.1"], "ports": {"dns": 8600, "http": -1},
    "dns_config": {"service_ttl": {"*": "5s"}, "node_ttl": "10s", "only_passing": True},
    "services": [{"name": "web", "port": 80}]}).encode())
write("config_file", "hcl", b"\x01" + b'datacenter = "dc2"\nserver = true\n'
      b'ports { dns = 8600 }\ndns_config { node_ttl = "5s" }\nretry_join = ["a", "b"]\n')
write("config_file", "toml", b"\x02" + b'datacenter = "dc2"\nraft_multiplier = 2\n'
      b'[performance]\nraft_multiplier = 1\n[dns_config]\nudp_answer_limit = 3\n')

for i, d in enumerate(["1h2m3.5s", "10s", "-1.5ms", "300", "1\u00b5s", "0", "2562047h"]):
    write("go_duration", f"{i}", d)

for i, f in enumerate([
    'ServiceName == "web"',
    '"primary" in ServiceTags and ServiceMeta.k != "v"',
    'Node matches "^n[0-9]+" or not (Status == passing)',
    'NodeMeta.rack is not empty and ServicePort > 8000',
    'Checks.Status contains "critical"',
]):
    write("filter_expression", f"{i}", f)


def frame(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def call(method, body_obj, call_id=1):
    return frame({"Call": [call_id, method, msgpack.packb(body_obj, use_bin_type=True)]})


hello = frame({"Hello": [0x4245_4143_4f4e_5250, 2, "cluster"]})
vote = [[[7, 1], False], [[6, 1], 40]]
write("rpc_frames", "vote", hello + call(2, vote))
write("rpc_frames", "read-index", hello + call(12, True))
write("rpc_frames", "renew", hello + call(15, "8f3c6a0e-0000-4000-8000-000000000000"))
write("rpc_frames", "catalog-wait", hello + call(21, [10, 1000]))
write("rpc_frames", "service-stream", hello + frame(
    {"Subscribe": [2, 22, msgpack.packb({"service": "web", "after": 0}, use_bin_type=True)]}))
write("rpc_frames", "append-empty", hello + call(1, [[[7, 1], True], [[6, 1], 40], [], [[6, 1], 40]]))
write("rpc_frames", "cancel", hello + frame({"Cancel": [3]}) + frame({"Fail": [1, "x"]}))
