use super::*;
use crate::model::{CheckDefinition, NodeSpec};

fn node(name: &str, addr: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        address: addr.into(),
        datacenter: "dc1".into(),
        ..Default::default()
    }
}

fn service(id: &str, name: &str, tags: &[&str]) -> ServiceSpec {
    ServiceSpec {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        port: 8080,
        ..Default::default()
    }
}

fn ttl_check(id: &str, service_id: &str, status: Option<CheckStatus>) -> CheckSpec {
    CheckSpec {
        check_id: id.into(),
        name: id.into(),
        status,
        service_id: service_id.into(),
        definition: CheckDefinition {
            ttl: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn register(state: &mut State, index: Index, reg: Registration) -> (Outcome, Vec<Change>) {
    let mut changes = Vec::new();
    let out = state.apply(index, 0, &Command::Register(Box::new(reg)), &mut changes);
    (out, changes)
}

fn web(state: &mut State, index: Index) {
    let (out, _) = register(
        state,
        index,
        Registration {
            node: node("n1", "10.0.0.1"),
            service: Some(service("web1", "web", &["v1"])),
            checks: vec![ttl_check("service:web1", "web1", None)],
            ..Default::default()
        },
    );
    out.unwrap();
}

#[test]
fn register_stamps_indexes_and_starts_checks_critical() {
    let mut state = State::new();
    web(&mut state, 5);
    let n = state.node("N1").expect("node lookup is case-insensitive");
    assert_eq!((n.create_index, n.modify_index), (5, 5));
    let s = state.service("n1", "web1").unwrap();
    assert_eq!((s.create_index, s.modify_index), (5, 5));
    let c = state.check("n1", "service:web1").unwrap();
    assert_eq!(c.status, CheckStatus::Critical);
    assert_eq!(state.indexes().services, 5);
    assert_eq!(state.service_index("web"), 5);
    let instances = state.instances("WEB");
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].status(), CheckStatus::Critical);
}

#[test]
fn re_registering_identically_changes_nothing() {
    let mut state = State::new();
    web(&mut state, 5);
    let before = state.clone();
    let (out, changes) = register(
        &mut state,
        9,
        Registration {
            node: node("n1", "10.0.0.1"),
            service: Some(service("web1", "web", &["v1"])),
            checks: vec![ttl_check("service:web1", "web1", None)],
            ..Default::default()
        },
    );
    out.unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(state.service("n1", "web1"), before.service("n1", "web1"));
    assert_eq!(state.indexes().last, 9);
}

#[test]
fn update_check_changes_health_and_index_only_on_change() {
    let mut state = State::new();
    web(&mut state, 5);
    let cmd = Command::UpdateCheck {
        node: "n1".into(),
        check_id: "service:web1".into(),
        status: CheckStatus::Passing,
        output: Some("ok".into()),
    };
    let mut changes = Vec::new();
    state.apply(6, 0, &cmd, &mut changes).unwrap();
    assert_eq!(state.instances("web")[0].status(), CheckStatus::Passing);
    assert_eq!(state.check("n1", "service:web1").unwrap().modify_index, 6);
    assert_eq!(state.service_index("web"), 6);

    let mut changes = Vec::new();
    state.apply(7, 0, &cmd, &mut changes).unwrap();
    assert!(changes.is_empty());
    assert_eq!(state.check("n1", "service:web1").unwrap().modify_index, 6);
}

#[test]
fn update_of_unknown_check_is_refused() {
    let mut state = State::new();
    web(&mut state, 5);
    let before = state.clone();
    let mut changes = Vec::new();
    let out = state.apply(
        6,
        0,
        &Command::UpdateCheck {
            node: "n1".into(),
            check_id: "nope".into(),
            status: CheckStatus::Passing,
            output: None,
        },
        &mut changes,
    );
    assert_eq!(out, Err(ApplyError::UnknownCheck("nope".into())));
    assert!(changes.is_empty());
    assert_eq!(state.instances("web").len(), before.instances("web").len());
}

#[test]
fn check_for_unknown_service_refuses_whole_registration() {
    let mut state = State::new();
    let (out, changes) = register(
        &mut state,
        3,
        Registration {
            node: node("n1", "10.0.0.1"),
            checks: vec![ttl_check("c", "ghost", None)],
            ..Default::default()
        },
    );
    assert_eq!(out, Err(ApplyError::UnknownServiceForCheck("ghost".into())));
    assert!(changes.is_empty());
    assert!(
        state.node("n1").is_none(),
        "refusal must not create the node"
    );
}

#[test]
fn node_check_affects_every_service_on_node() {
    let mut state = State::new();
    web(&mut state, 5);
    let (out, _) = register(
        &mut state,
        6,
        Registration {
            node: node("n1", "10.0.0.1"),
            skip_node_update: true,
            checks: vec![CheckSpec {
                check_id: "_node_maintenance".into(),
                name: "Node Maintenance Mode".into(),
                status: Some(CheckStatus::Critical),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    out.unwrap();
    let inst = state.instances("web");
    assert_eq!(inst[0].checks.len(), 2);
    assert_eq!(state.service_index("web"), 6);
}

#[test]
fn deregister_service_removes_its_checks_and_index_entry() {
    let mut state = State::new();
    web(&mut state, 5);
    let mut changes = Vec::new();
    state
        .apply(
            8,
            0,
            &Command::Deregister {
                node: "n1".into(),
                service_id: Some("web1".into()),
                check_id: None,
            },
            &mut changes,
        )
        .unwrap();
    assert!(!state.has_service("web"));
    assert!(state.check("n1", "service:web1").is_none());
    assert_eq!(state.indexes().services, 8);
    assert_eq!(state.indexes().checks, 8);
    assert!(changes.contains(&Change::Service(("n1".into(), "web1".into()))));
    assert!(changes.contains(&Change::Check(("n1".into(), "service:web1".into()))));
}

#[test]
fn deregister_node_removes_everything_on_it() {
    let mut state = State::new();
    web(&mut state, 5);
    let mut changes = Vec::new();
    state
        .apply(
            9,
            0,
            &Command::Deregister {
                node: "N1".into(),
                service_id: None,
                check_id: None,
            },
            &mut changes,
        )
        .unwrap();
    assert!(state.node("n1").is_none());
    assert_eq!(state.all_services().count(), 0);
    assert_eq!(state.all_checks().count(), 0);
}

#[test]
fn renaming_a_service_moves_it_between_names() {
    let mut state = State::new();
    web(&mut state, 5);
    let (out, _) = register(
        &mut state,
        6,
        Registration {
            node: node("n1", "10.0.0.1"),
            service: Some(service("web1", "api", &[])),
            ..Default::default()
        },
    );
    out.unwrap();
    assert!(!state.has_service("web"));
    assert_eq!(state.instances("api").len(), 1);
    assert_eq!(state.service_index("web"), 6);
}

#[test]
fn replace_existing_checks_drops_unlisted_ones() {
    let mut state = State::new();
    web(&mut state, 5);
    let (out, _) = register(
        &mut state,
        6,
        Registration {
            node: node("n1", "10.0.0.1"),
            service: Some(service("web1", "web", &["v1"])),
            checks: vec![ttl_check("other", "web1", Some(CheckStatus::Passing))],
            replace_existing_checks: true,
            ..Default::default()
        },
    );
    out.unwrap();
    assert!(state.check("n1", "service:web1").is_none());
    assert_eq!(state.instances("web")[0].status(), CheckStatus::Passing);
}

#[test]
fn rows_round_trip_preserves_state() {
    let mut state = State::new();
    web(&mut state, 5);
    let mut changes = Vec::new();
    state
        .apply(
            6,
            0,
            &Command::UpdateCheck {
                node: "n1".into(),
                check_id: "service:web1".into(),
                status: CheckStatus::Warning,
                output: None,
            },
            &mut changes,
        )
        .unwrap();
    let again = State::from_rows(state.to_rows());
    assert_eq!(again, state);
}

#[test]
fn replicas_fed_the_same_commands_agree() {
    let mut a = State::new();
    let mut b = State::new();
    for s in [&mut a, &mut b] {
        web(s, 1);
        let mut ch = Vec::new();
        s.apply(
            2,
            0,
            &Command::UpdateCheck {
                node: "n1".into(),
                check_id: "service:web1".into(),
                status: CheckStatus::Passing,
                output: None,
            },
            &mut ch,
        )
        .unwrap();
    }
    assert_eq!(a, b);
}

// === KV and sessions ===

fn run(state: &mut State, index: Index, at_ms: u64, cmd: Command) -> Outcome {
    let mut changes = Vec::new();
    state.apply(index, at_ms, &cmd, &mut changes)
}

fn set(key: &str, value: &str, cas: Option<Index>) -> Command {
    Command::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        cas,
    }
}

fn session(id: &str, behavior: crate::model::SessionBehavior, checks: &[&str]) -> Command {
    Command::SessionCreate(crate::model::Session {
        id: id.into(),
        node: "n1".into(),
        lock_delay: std::time::Duration::from_secs(15),
        behavior,
        service_checks: checks.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    })
}

fn acquire(key: &str, session: &str) -> Command {
    Command::KvAcquire {
        key: key.into(),
        value: b"me".to_vec(),
        flags: 0,
        session: session.into(),
    }
}

#[test]
fn kv_cas_zero_creates_only_and_cas_index_must_match() {
    let mut s = State::new();
    assert_eq!(
        run(&mut s, 1, 0, set("a", "1", Some(0))),
        Ok(Applied::Bool(true))
    );
    assert_eq!(
        run(&mut s, 2, 0, set("a", "2", Some(0))),
        Ok(Applied::Bool(false))
    );
    assert_eq!(s.kv_get("a").unwrap().value, b"1");
    assert_eq!(
        run(&mut s, 3, 0, set("a", "3", Some(1))),
        Ok(Applied::Bool(true))
    );
    let e = s.kv_get("a").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.value.as_slice()),
        (1, 3, &b"3"[..])
    );
    assert_eq!(s.indexes().kv, 3);
}

#[test]
fn kv_recursive_delete_and_prefix_reads() {
    let mut s = State::new();
    for (i, k) in ["a/1", "a/2", "ab", "b"].iter().enumerate() {
        run(&mut s, i as u64 + 1, 0, set(k, "x", None)).unwrap();
    }
    let keys: Vec<_> = s.kv_prefix("a").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a/1", "a/2", "ab"]);
    run(
        &mut s,
        9,
        0,
        Command::KvDelete {
            key: "a/".into(),
            recurse: true,
            cas: None,
        },
    )
    .unwrap();
    let keys: Vec<_> = s.kv_prefix("").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["ab", "b"]);
    assert_eq!(s.indexes().kv, 9);
}

#[test]
fn lock_is_exclusive_and_release_or_destroy_frees_it_with_lock_delay() {
    use crate::model::SessionBehavior::Release;
    let mut s = State::new();
    web(&mut s, 1);
    run(&mut s, 2, 0, session("s1", Release, &[])).unwrap();
    run(&mut s, 3, 0, session("s2", Release, &[])).unwrap();
    assert_eq!(
        run(&mut s, 4, 1_000, acquire("lock", "s1")),
        Ok(Applied::Bool(true))
    );
    assert_eq!(
        run(&mut s, 5, 1_000, acquire("lock", "s2")),
        Ok(Applied::Bool(false))
    );
    assert_eq!(
        run(&mut s, 6, 1_000, acquire("lock", "s1")),
        Ok(Applied::Bool(true))
    );
    assert_eq!(
        s.kv_get("lock").unwrap().lock_index,
        1,
        "re-acquire does not bump"
    );

    run(
        &mut s,
        7,
        10_000,
        Command::SessionDestroy { id: "s1".into() },
    )
    .unwrap();
    let e = s.kv_get("lock").unwrap();
    assert!(
        e.session.is_empty(),
        "release behavior keeps the key, unlocked"
    );
    // Within s1's 15 s lock-delay, nobody may take it; after it, s2 can.
    assert_eq!(
        run(&mut s, 8, 20_000, acquire("lock", "s2")),
        Ok(Applied::Bool(false))
    );
    assert_eq!(
        run(&mut s, 9, 25_001, acquire("lock", "s2")),
        Ok(Applied::Bool(true))
    );
    assert_eq!(s.kv_get("lock").unwrap().lock_index, 2);
    assert_eq!(
        run(&mut s, 10, 0, acquire("lock", "ghost")),
        Err(ApplyError::UnknownSession("ghost".into()))
    );
}

#[test]
fn delete_behavior_removes_held_keys() {
    use crate::model::SessionBehavior::Delete;
    let mut s = State::new();
    web(&mut s, 1);
    run(&mut s, 2, 0, session("s1", Delete, &[])).unwrap();
    run(&mut s, 3, 0, acquire("k", "s1")).unwrap();
    run(&mut s, 4, 0, Command::SessionDestroy { id: "s1".into() }).unwrap();
    assert!(s.kv_get("k").is_none());
    assert!(s.session("s1").is_none());
}

#[test]
fn critical_linked_check_invalidates_session() {
    use crate::model::SessionBehavior::Release;
    let mut s = State::new();
    web(&mut s, 1);
    let pass = Command::UpdateCheck {
        node: "n1".into(),
        check_id: "service:web1".into(),
        status: CheckStatus::Passing,
        output: None,
    };
    // A critical check cannot back a new session.
    assert_eq!(
        run(&mut s, 2, 0, session("s1", Release, &["service:web1"])),
        Err(ApplyError::CriticalCheck("service:web1".into()))
    );
    run(&mut s, 3, 0, pass).unwrap();
    run(&mut s, 4, 0, session("s1", Release, &["service:web1"])).unwrap();
    run(&mut s, 5, 0, acquire("k", "s1")).unwrap();
    run(
        &mut s,
        6,
        0,
        Command::UpdateCheck {
            node: "n1".into(),
            check_id: "service:web1".into(),
            status: CheckStatus::Critical,
            output: None,
        },
    )
    .unwrap();
    assert!(s.session("s1").is_none());
    assert!(s.kv_get("k").unwrap().session.is_empty());
}

#[test]
fn txn_is_all_or_nothing() {
    let mut s = State::new();
    run(&mut s, 1, 0, set("x", "old", None)).unwrap();
    let before = s.clone();
    let ops = vec![
        TxnOp::Set {
            key: "y".into(),
            value: b"new".to_vec(),
            flags: 0,
        },
        TxnOp::Cas {
            key: "x".into(),
            value: b"new".to_vec(),
            flags: 0,
            index: 99,
        },
    ];
    let mut changes = Vec::new();
    let out = s.apply(2, 0, &Command::Txn(ops), &mut changes);
    match out {
        Err(ApplyError::Txn(errors)) => assert_eq!(errors[0].op_index, 1),
        other => panic!("expected a txn failure, got {other:?}"),
    }
    assert!(changes.is_empty());
    assert!(s.kv_get("y").is_none());
    assert_eq!(s.kv_get("x"), before.kv_get("x"));

    let ops = vec![
        TxnOp::Set {
            key: "y".into(),
            value: b"new".to_vec(),
            flags: 0,
        },
        TxnOp::Cas {
            key: "x".into(),
            value: b"new".to_vec(),
            flags: 0,
            index: 1,
        },
        TxnOp::Get { key: "x".into() },
    ];
    match s.apply(3, 0, &Command::Txn(ops), &mut changes) {
        Ok(Applied::Txn(entries)) => assert_eq!(entries.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.kv_get("y").unwrap().value, b"new");
}

#[test]
fn kv_and_sessions_survive_rows_round_trip() {
    use crate::model::SessionBehavior::Release;
    let mut s = State::new();
    web(&mut s, 1);
    run(&mut s, 2, 0, session("s1", Release, &[])).unwrap();
    run(&mut s, 3, 0, acquire("k", "s1")).unwrap();
    run(&mut s, 4, 5, Command::SessionDestroy { id: "s1".into() }).unwrap();
    run(&mut s, 5, 0, set("bin", "\u{0}\u{ff}", None)).unwrap();
    run(&mut s, 6, 0, set("gone", "v", None)).unwrap();
    let delete = Command::KvDelete {
        key: "gone".into(),
        recurse: false,
        cas: None,
    };
    run(&mut s, 7, 0, delete).unwrap();
    run(&mut s, 8, 0, Command::InitCluster { id: "c1".into() }).unwrap();
    let rows = s.to_rows();
    assert!(!rows.lock_delays.is_empty() && !rows.kv_tombstones.is_empty());
    assert_eq!(State::from_rows(rows.clone()), s);
    // Snapshots are written from the borrowed rows: they must read back as the copied ones.
    let written = rmp_serde::to_vec_named(&s.rows_of()).unwrap();
    assert_eq!(rmp_serde::from_slice::<Rows>(&written).unwrap(), rows);
}

#[test]
fn restore_keeps_this_clusters_identity() {
    let mut other = State::new();
    run(
        &mut other,
        1,
        0,
        Command::InitCluster { id: "other".into() },
    )
    .unwrap();
    run(&mut other, 2, 0, set("k", "v", None)).unwrap();
    let saved = other.to_rows();

    let mut s = State::new();
    run(&mut s, 1, 0, Command::InitCluster { id: "mine".into() }).unwrap();
    run(&mut s, 5, 0, Command::Restore(Box::new(saved.clone()))).unwrap();
    assert_eq!(s.cluster_id(), "mine");
    assert_eq!(s.kv_get("k").unwrap().value, b"v");
    assert_eq!(s.indexes().kv, 5);

    // Restored before the cluster was named: naming still works afterwards.
    let mut fresh = State::new();
    run(&mut fresh, 1, 0, Command::Restore(Box::new(saved))).unwrap();
    assert_eq!(fresh.cluster_id(), "");
    run(
        &mut fresh,
        2,
        0,
        Command::InitCluster { id: "fresh".into() },
    )
    .unwrap();
    assert_eq!(fresh.cluster_id(), "fresh");
}

#[test]
fn checks_without_a_definition_share_one_and_keep_their_own_otherwise() {
    let mut state = State::new();
    web(&mut state, 5);
    for (i, name) in ["n2", "n3"].into_iter().enumerate() {
        let check = CheckSpec {
            check_id: "alive".into(),
            name: "alive".into(),
            ..Default::default()
        };
        register(
            &mut state,
            6 + i as Index,
            Registration {
                node: node(name, "10.0.0.2"),
                checks: vec![check],
                ..Default::default()
            },
        )
        .0
        .unwrap();
    }
    let restored = State::from_rows(
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&state.to_rows()).unwrap()).unwrap(),
    );
    for s in [&state, &restored] {
        let (a, b) = (
            s.check("n2", "alive").unwrap(),
            s.check("n3", "alive").unwrap(),
        );
        assert!(Arc::ptr_eq(&a.definition, &b.definition));
        let web = s.check("n1", "service:web1").unwrap();
        assert_eq!(web.definition.ttl, Some(std::time::Duration::from_secs(30)));
        assert!(!Arc::ptr_eq(&a.definition, &web.definition));
    }
}

#[test]
fn instance_sets_stay_sorted_across_their_small_and_large_forms() {
    let mut set = InstanceSet::default();
    let mut model = std::collections::BTreeSet::new();
    let item = |i: usize| -> ItemKey {
        (
            format!("n{:02}", (i * 7) % 40).into(),
            format!("web{i}").into(),
        )
    };
    for i in 0..40 {
        set.insert(item(i));
        set.insert(item(i));
        model.insert(item(i));
        assert!(set.iter().eq(model.iter()), "after inserting {i}");
    }
    assert!(matches!(set, InstanceSet::Large(_)));
    for i in (0..40).rev() {
        set.remove(&item(i));
        set.remove(&Default::default());
        model.remove(&item(i));
        assert!(set.iter().eq(model.iter()), "after removing {i}");
        let rebuilt = model.iter().fold(InstanceSet::default(), |mut s, k| {
            s.insert(k.clone());
            s
        });
        assert_eq!(set, rebuilt);
    }
    assert!(set.is_empty());
    assert!(matches!(set, InstanceSet::Small(_)));
}

// === service snapshots: the event stream and a client's materialized views ===

fn instance(state: &mut State, index: Index, node_name: &str, addr: &str, id: &str, name: &str) {
    let (out, _) = register(
        state,
        index,
        Registration {
            node: node(node_name, addr),
            service: Some(service(id, name, &[])),
            checks: vec![ttl_check(&format!("service:{id}"), id, None)],
            ..Default::default()
        },
    );
    out.unwrap();
}

fn node_check(state: &mut State, index: Index, node_name: &str, status: CheckStatus) {
    let (out, _) = register(
        state,
        index,
        Registration {
            node: node(node_name, "10.0.0.1"),
            checks: vec![ttl_check("serfHealth", "", Some(status))],
            skip_node_update: true,
            ..Default::default()
        },
    );
    out.unwrap();
}

fn apply(state: &mut State, index: Index, command: Command) {
    state.apply(index, 0, &command, &mut Vec::new()).unwrap();
}

/// A client holding web and db from snapshots answers for both exactly as the server does,
/// through every kind of change, and forgets the rows of what it dropped.
#[test]
fn a_client_copy_built_from_snapshots_matches_the_server() {
    let mut server = State::new();
    instance(&mut server, 1, "n1", "10.0.0.1", "web1", "web");
    instance(&mut server, 2, "n2", "10.0.0.2", "web2", "web");
    instance(&mut server, 3, "n1", "10.0.0.1", "db1", "db");
    node_check(&mut server, 4, "n1", CheckStatus::Passing);
    let mut client = State::new();
    let same = |client: &State, server: &State| {
        for name in ["web", "db"] {
            assert_eq!(
                client.service_snapshot(name),
                server.service_snapshot(name),
                "{name}"
            );
        }
    };
    client.replace_service(server.service_snapshot("web"));
    client.replace_service(server.service_snapshot("DB"));
    same(&client, &server);

    apply(
        &mut server,
        5,
        Command::UpdateCheck {
            node: "n2".into(),
            check_id: "service:web2".into(),
            status: CheckStatus::Passing,
            output: None,
        },
    );
    node_check(&mut server, 6, "n1", CheckStatus::Critical);
    apply(
        &mut server,
        7,
        Command::Deregister {
            node: "n2".into(),
            service_id: None,
            check_id: None,
        },
    );
    client.replace_service(server.service_snapshot("web"));
    client.replace_service(server.service_snapshot("db"));
    same(&client, &server);
    assert_eq!(client.service_index("web"), 7);
    assert!(
        client.node("n2").is_none(),
        "a node nothing runs on is dropped"
    );

    client.drop_service("web");
    assert!(client.instances("web").is_empty());
    assert!(client.check("n1", "service:web1").is_none());
    assert!(client.node("n1").is_some(), "db still runs on n1");
    client.drop_service("db");
    assert_eq!(client.nodes().count(), 0);
    assert_eq!(client.all_checks().count(), 0);
    assert_eq!(client.all_services().count(), 0);
}

/// A server state with `web1` (service `web`, index 1) and `db1` (`db`, index 2) on `n1`.
fn web_and_db_on_n1() -> State {
    let mut server = State::new();
    instance(&mut server, 1, "n1", "10.0.0.1", "web1", "web");
    instance(&mut server, 2, "n1", "10.0.0.1", "db1", "db");
    server
}

/// Snapshots of two names from servers at different indexes: a node check shared by both
/// keeps the newer copy, and a node check deleted by the newer snapshot's index goes.
#[test]
fn shared_node_rows_keep_the_newer_copy() {
    let mut server = web_and_db_on_n1();
    node_check(&mut server, 3, "n1", CheckStatus::Passing);
    let old_db = server.service_snapshot("db");
    node_check(&mut server, 4, "n1", CheckStatus::Critical);

    let mut client = State::new();
    client.replace_service(server.service_snapshot("web"));
    client.replace_service(old_db);
    let serf = client.check("n1", "serfHealth").unwrap();
    assert_eq!(
        serf.status,
        CheckStatus::Critical,
        "the older db snapshot lost"
    );
    assert_eq!(client.instances("web")[0].status(), CheckStatus::Critical);

    apply(
        &mut server,
        5,
        Command::Deregister {
            node: "n1".into(),
            service_id: None,
            check_id: Some("serfHealth".into()),
        },
    );
    client.replace_service(server.service_snapshot("db"));
    assert!(
        client.check("n1", "serfHealth").is_none(),
        "deleted at index 5, which the snapshot has reached"
    );
    assert_eq!(client.service_snapshot("web").instances[0].checks.len(), 1);
}

/// A service ID re-registered under another name: whichever order the two names' snapshots
/// arrive in, the instance ends up under the name its newer row gives, and only there.
#[test]
fn a_renamed_instance_belongs_to_its_newer_name() {
    let mut server = State::new();
    instance(&mut server, 1, "n1", "10.0.0.1", "x1", "web");
    let old_web = server.service_snapshot("web");
    instance(&mut server, 2, "n1", "10.0.0.1", "x1", "api");
    let (new_web, api) = (
        server.service_snapshot("web"),
        server.service_snapshot("api"),
    );
    assert!(new_web.instances.is_empty());

    for order in [[&api, &old_web], [&old_web, &api]] {
        let mut client = State::new();
        for snapshot in order {
            client.replace_service(snapshot.clone());
        }
        assert!(client.instances("web").is_empty(), "{order:?}");
        assert_eq!(client.service_snapshot("api").instances, api.instances);
        client.replace_service(new_web.clone());
        assert_eq!(client.service_snapshot("api").instances, api.instances);
        assert_eq!(client.service_snapshot("web"), new_web);
    }
}

/// A node check deleted by the newer snapshot of one name is not brought back by an older
/// snapshot of another name on the same node (from a server that was behind).
#[test]
fn an_older_snapshot_does_not_bring_back_a_deleted_node_check() {
    let mut server = web_and_db_on_n1();
    node_check(&mut server, 3, "n1", CheckStatus::Critical);
    let old_web = server.service_snapshot("web");
    apply(
        &mut server,
        4,
        Command::Deregister {
            node: "n1".into(),
            service_id: None,
            check_id: Some("serfHealth".into()),
        },
    );
    let mut client = State::new();
    client.replace_service(server.service_snapshot("db"));
    client.replace_service(old_web);
    assert!(client.check("n1", "serfHealth").is_none());
    assert_eq!(
        client.instances("db")[0].checks.len(),
        1,
        "db1's own check only"
    );
}
