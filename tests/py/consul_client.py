"""Drives a Beacon server with py-consul, a real Consul client library.

Usage: python consul_client.py HOST PORT. Exits non-zero (with a traceback) on any mismatch.
"""

import sys
import threading

import consul


def main(host: str, port: int) -> None:
    c = consul.Consul(host=host, port=port)

    # Status and agent identity, as client libraries read them.
    assert c.status.leader() != "", "a leader is reported"
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1", me

    # Service registration with a TTL check, discovered through health.
    c.agent.service.register(
        "web", service_id="web1", address="10.0.0.1", port=8080, tags=["v1"],
        check=consul.Check.ttl("30s"),
    )
    _, passing = c.health.service("web", passing=True)
    assert passing == [], "the new TTL check starts critical"
    c.agent.check.ttl_pass("service:web1")
    index, passing = c.health.service("web", passing=True)
    assert [e["Service"]["ID"] for e in passing] == ["web1"], passing
    assert int(index) >= 1
    _, services = c.catalog.services()
    assert services["web"] == ["v1"], services
    c.agent.service.deregister("web1")
    _, nodes = c.catalog.service("web")
    assert nodes == [], nodes

    # KV: put/get/delete/recurse/cas.
    assert c.kv.put("app/config", "v1") is True
    index, entry = c.kv.get("app/config")
    assert entry["Value"] == b"v1", entry
    assert c.kv.put("app/config", "v2", cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.put("app/config", "v2", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("app/flags", "on", flags=7) is True
    _, entries = c.kv.get("app/", recurse=True)
    assert [e["Key"] for e in entries] == ["app/config", "app/flags"], entries
    assert entries[1]["Flags"] == 7
    _, keys = c.kv.get("app/", keys=True)
    assert keys == ["app/config", "app/flags"], keys
    assert c.kv.delete("app/flags") is True
    _, missing = c.kv.get("app/flags")
    assert missing is None
    assert c.kv.delete("app/", recurse=True) is True
    _, gone = c.kv.get("app/", recurse=True)
    assert gone is None

    # Sessions and locks: exactly one of two contenders wins; destroy releases.
    s1 = c.session.create(name="one", lock_delay=0)
    s2 = c.session.create(name="two", lock_delay=0)
    results = {}

    def contend(name, session):
        results[name] = c.kv.put("service/leader", name, acquire=session)

    threads = [threading.Thread(target=contend, args=(n, s)) for n, s in (("one", s1), ("two", s2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True], results
    winner = s1 if results["one"] else s2
    loser = s2 if winner == s1 else s1
    _, held = c.kv.get("service/leader")
    assert held["Session"] == winner, held
    _, info = c.session.info(winner)
    assert info["ID"] == winner, info
    _, sessions = c.session.list()
    assert {s["ID"] for s in sessions} == {s1, s2}
    assert c.kv.put("service/leader", "x", release=loser) is False
    c.session.destroy(winner)
    _, held = c.kv.get("service/leader")
    assert "Session" not in held or not held["Session"], held
    assert c.kv.put("service/leader", "mine", acquire=loser) is True
    assert c.kv.put("service/leader", "mine", release=loser) is True
    c.session.destroy(loser)

    # A session with a TTL can be renewed.
    s3 = c.session.create(ttl=10)
    renewed = c.session.renew(s3)
    assert renewed["ID"] == s3, renewed
    c.session.destroy(s3)

    # Transactions.
    import base64
    ok = c.txn.put([
        {"KV": {"Verb": "set", "Key": "txn/a", "Value": base64.b64encode(b"1").decode()}},
        {"KV": {"Verb": "get", "Key": "txn/a"}},
    ])
    assert ok["Errors"] is None, ok

    print("py-consul: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
