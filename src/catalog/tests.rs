use super::*;
use crate::model::CheckDefinition;

fn node(name: &str, addr: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        address: addr.into(),
        datacenter: "dc1".into(),
        ..Default::default()
    }
}

fn service(id: &str, name: &str, tags: &[&str]) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        port: 8080,
        ..Default::default()
    }
}

fn ttl_check(id: &str, service_id: &str, status: Option<CheckStatus>) -> CheckRegistration {
    CheckRegistration {
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
    let out = state.apply(index, &Command::Register(Box::new(reg)), &mut changes);
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
    state.apply(6, &cmd, &mut changes).unwrap();
    assert_eq!(state.instances("web")[0].status(), CheckStatus::Passing);
    assert_eq!(state.check("n1", "service:web1").unwrap().modify_index, 6);
    assert_eq!(state.service_index("web"), 6);

    let mut changes = Vec::new();
    state.apply(7, &cmd, &mut changes).unwrap();
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
            checks: vec![CheckRegistration {
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
