//! Pools talking over real UDP on 127.0.0.1 with fast timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::*;

const WAIT: Duration = Duration::from_secs(10);
const JOIN: Duration = Duration::from_secs(2);

fn fast(name: &str) -> Config {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = Config::lan(name, any, any);
    config.probe_interval = Duration::from_millis(100);
    config.probe_timeout = Duration::from_millis(50);
    config.gossip_interval = Duration::from_millis(50);
    config.leave_propagate_delay = Duration::from_millis(300);
    config.tags.insert("role".into(), "node".into());
    config.tags.insert("id".into(), format!("id-{name}"));
    config
}

struct Agent {
    pool: Pool,
    stop: CancellationToken,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn spawn(config: Config) -> Agent {
    let stop = CancellationToken::new();
    let pool = Pool::start(config, stop.clone()).await.expect("start");
    Agent { pool, stop }
}

/// Binding the address of a just-stopped agent may race with its task
/// dropping the socket.
async fn spawn_at(mut config: Config, addr: SocketAddr) -> Agent {
    config.bind = addr;
    config.advertise = addr;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stop = CancellationToken::new();
        match Pool::start(config.clone(), stop.clone()).await {
            Ok(pool) => return Agent { pool, stop },
            Err(StartError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("restart: {e}"),
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(pool: &Pool, name: &str) -> Option<Status> {
    pool.members()
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.status)
}

fn all_alive(pool: &Pool, n: usize) -> bool {
    let members = pool.members();
    members.len() == n && members.iter().all(|m| m.status == Status::Alive)
}

async fn trio(prefix: &str, tweak: impl Fn(&mut Config)) -> Vec<Agent> {
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut config = fast(&format!("{prefix}{i}"));
        tweak(&mut config);
        agents.push(spawn(config).await);
    }
    let seed = agents[0].pool.local_addr();
    for agent in &agents[1..] {
        assert_eq!(agent.pool.join(&[seed], JOIN).await.expect("join"), 1);
    }
    for agent in &agents {
        wait_for("three alive members", || all_alive(&agent.pool, 3)).await;
    }
    agents
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "beacon-gossip-{}-{}",
        std::process::id(),
        generate_key().replace(['/', '+', '='], "")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn three_pools_join_through_one_address() {
    let agents = trio("j", |_| {}).await;
    for agent in &agents {
        let members = agent.pool.members();
        for (i, member) in members.iter().enumerate() {
            assert_eq!(member.name, format!("j{i}"));
            assert_eq!(member.addr, agents[i].pool.local_addr());
            assert_eq!(member.tags.get("role").map(String::as_str), Some("node"));
            assert_eq!(member.tags.get("id"), Some(&format!("id-j{i}")));
        }
    }
    assert_eq!(agents[0].pool.local_name(), "j0");
}

#[tokio::test]
async fn stopped_member_fails_then_comes_back() {
    let mut agents = trio("f", |_| {}).await;
    let gone = agents.pop().unwrap();
    let addr = gone.pool.local_addr();
    let changes = agents[0].pool.changes();
    let seen = *changes.borrow();
    drop(gone);
    for agent in &agents {
        wait_for("f2 failed", || {
            status(&agent.pool, "f2") == Some(Status::Failed)
        })
        .await;
    }
    assert!(*changes.borrow() > seen, "changes() was not bumped");

    let back = spawn_at(fast("f2"), addr).await;
    back.pool
        .join(&[agents[0].pool.local_addr()], JOIN)
        .await
        .expect("rejoin");
    for agent in agents.iter().chain([&back]) {
        wait_for("f2 alive again", || all_alive(&agent.pool, 3)).await;
    }
}

#[tokio::test]
async fn leave_is_seen_as_left() {
    let agents = trio("l", |_| {}).await;
    agents[2].pool.leave().await;
    assert_eq!(status(&agents[2].pool, "l2"), Some(Status::Left));
    for agent in &agents[..2] {
        wait_for("l2 left", || {
            status(&agent.pool, "l2") == Some(Status::Left)
        })
        .await;
    }
    // Give failure detection time to (wrongly) kick in, then check again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for agent in &agents[..2] {
        assert_eq!(status(&agent.pool, "l2"), Some(Status::Left));
    }
    assert!(matches!(
        agents[2]
            .pool
            .join(&[agents[0].pool.local_addr()], JOIN)
            .await,
        Err(JoinError::Left)
    ));
}

#[tokio::test]
async fn force_leave_failed_member() {
    let mut agents = trio("x", |_| {}).await;
    drop(agents.pop());
    for agent in &agents {
        wait_for("x2 failed", || {
            status(&agent.pool, "x2") == Some(Status::Failed)
        })
        .await;
    }
    assert!(matches!(
        agents[0].pool.force_leave("nobody", false),
        Err(ForceLeaveError::Unknown(_))
    ));
    assert!(matches!(
        agents[0].pool.force_leave("x1", false),
        Err(ForceLeaveError::Alive(_))
    ));

    agents[0].pool.force_leave("x2", false).unwrap();
    for agent in &agents {
        wait_for("x2 left", || {
            status(&agent.pool, "x2") == Some(Status::Left)
        })
        .await;
    }
    agents[1].pool.force_leave("x2", true).unwrap();
    for agent in &agents {
        wait_for("x2 pruned", || status(&agent.pool, "x2").is_none()).await;
    }
}

#[tokio::test]
async fn failed_member_is_reaped() {
    let mut agents = trio("r", |c| c.reconnect_timeout = Duration::from_secs(1)).await;
    drop(agents.pop());
    for agent in &agents {
        wait_for("r2 failed", || {
            status(&agent.pool, "r2") == Some(Status::Failed)
        })
        .await;
    }
    for agent in &agents {
        wait_for("r2 reaped", || status(&agent.pool, "r2").is_none()).await;
    }
    assert_eq!(agents[0].pool.members().len(), 2);
}

#[tokio::test]
async fn encryption_requires_the_same_key() {
    let key = generate_key();
    let keyed = |name: &str, key: &str| {
        let mut config = fast(name);
        config.keyring = Some(Keyring::new(key).unwrap());
        config
    };
    let a = spawn(keyed("e0", &key)).await;
    let b = spawn(keyed("e1", &key)).await;
    assert_eq!(b.pool.join(&[a.pool.local_addr()], JOIN).await.unwrap(), 1);
    wait_for("e0 and e1 alive", || {
        all_alive(&a.pool, 2) && all_alive(&b.pool, 2)
    })
    .await;

    let wrong = spawn(keyed("e2", &generate_key())).await;
    let short = Duration::from_millis(600);
    match wrong.pool.join(&[a.pool.local_addr()], short).await {
        Err(JoinError::Failed(why)) => assert_eq!(why[0].1, JoinFailure::NoAnswer),
        other => panic!("wrong key joined: {other:?}"),
    }
    let plain = spawn(fast("e3")).await;
    assert!(
        plain
            .pool
            .join(&[a.pool.local_addr()], short)
            .await
            .is_err()
    );
    // Nor the other way round: a plain pool refuses an encrypted joiner.
    assert!(
        wrong
            .pool
            .join(&[plain.pool.local_addr()], short)
            .await
            .is_err()
    );
    assert_eq!(a.pool.members().len(), 2);
    assert_eq!(plain.pool.members().len(), 1);
}

#[tokio::test]
async fn keyring_rotation_across_the_pool() {
    let first = generate_key();
    let second = generate_key();
    let files: Vec<PathBuf> = (0..3)
        .map(|i| temp_path(&format!("k{i}.keyring")))
        .collect();
    let agents = {
        let mut agents = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let mut config = fast(&format!("k{i}"));
            config.keyring = Some(Keyring::new(&first).unwrap());
            config.keyring_file = Some(file.clone());
            agents.push(spawn(config).await);
        }
        for agent in &agents[1..] {
            agent
                .pool
                .join(&[agents[0].pool.local_addr()], JOIN)
                .await
                .unwrap();
        }
        for agent in &agents {
            wait_for("three alive", || all_alive(&agent.pool, 3)).await;
        }
        agents
    };
    let pool = &agents[0].pool;
    let counts = |pairs: &[(&String, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, n)| ((*k).clone(), *n)).collect()
    };
    wait_for("key reports", || {
        pool.keyring_list().keys == counts(&[(&first, 3)])
    })
    .await;

    assert!(matches!(
        pool.keyring_use(&second),
        Err(KeyError::NotInstalled(_))
    ));
    assert!(matches!(
        pool.keyring_remove(&first),
        Err(KeyError::RemovePrimary)
    ));
    assert!(matches!(
        pool.keyring_install("not base64!"),
        Err(KeyError::Base64(_))
    ));

    pool.keyring_install(&second).unwrap();
    for agent in &agents {
        wait_for("second key installed everywhere", || {
            let list = agent.pool.keyring_list();
            list.members == 3
                && list.keys == counts(&[(&first, 3), (&second, 3)])
                && list.primary == counts(&[(&first, 3)])
        })
        .await;
    }
    for file in &files {
        wait_for("keyring file with both keys", || {
            Keyring::load(file)
                .ok()
                .flatten()
                .is_some_and(|k| k.keys() == vec![first.clone(), second.clone()])
        })
        .await;
    }

    agents[1].pool.keyring_use(&second).unwrap();
    wait_for("second key primary everywhere", || {
        pool.keyring_list().primary == counts(&[(&second, 3)])
    })
    .await;
    pool.keyring_remove(&first).unwrap();
    for agent in &agents {
        wait_for("first key gone", || {
            agent.pool.keyring_list().keys == counts(&[(&second, 3)])
        })
        .await;
    }
    for file in &files {
        wait_for("keyring file rewritten", || {
            Keyring::load(file)
                .ok()
                .flatten()
                .is_some_and(|k| k.keys() == vec![second.clone()])
        })
        .await;
    }

    // Still one pool: a newcomer with only the new key gets in, one with
    // only the old key does not.
    let mut config = fast("k3");
    config.keyring = Some(Keyring::new(&second).unwrap());
    let newcomer = spawn(config).await;
    newcomer
        .pool
        .join(&[pool.local_addr()], JOIN)
        .await
        .unwrap();
    for agent in agents.iter().chain([&newcomer]) {
        wait_for("four alive", || all_alive(&agent.pool, 4)).await;
    }
    let mut config = fast("k4");
    config.keyring = Some(Keyring::new(&first).unwrap());
    let stale = spawn(config).await;
    assert!(
        stale
            .pool
            .join(&[pool.local_addr()], Duration::from_millis(600))
            .await
            .is_err()
    );
    for file in files {
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}

#[tokio::test]
async fn garbage_packets_are_ignored() {
    let key = generate_key();
    let mut keyed = fast("g1");
    keyed.keyring = Some(Keyring::new(&key).unwrap());
    let targets = [spawn(fast("g0")).await, spawn(keyed).await];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let big = vec![0xAB; 60_000];
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x01],
        vec![0x02],
        vec![0xFF; 40],
        big,
        [vec![0x02], vec![7; 100]].concat(),
    ];
    for len in [3usize, 17, 64, 300, 1399] {
        let mut bytes = vec![0u8; len];
        rand_foca::fill(&mut bytes[..]);
        bytes[0] = 0x01;
        junk.push(bytes.clone());
        bytes[0] = 0x02;
        junk.push(bytes);
    }
    for target in &targets {
        for packet in &junk {
            let _ = socket.send_to(packet, target.pool.local_addr()).await;
        }
    }

    let mut plain_peer = fast("g2");
    plain_peer.tags.clear();
    let peer = spawn(plain_peer).await;
    assert_eq!(
        peer.pool
            .join(&[targets[0].pool.local_addr()], JOIN)
            .await
            .unwrap(),
        1
    );
    let mut keyed_peer = fast("g3");
    keyed_peer.keyring = Some(Keyring::new(&key).unwrap());
    let keyed_peer = spawn(keyed_peer).await;
    assert_eq!(
        keyed_peer
            .pool
            .join(&[targets[1].pool.local_addr()], JOIN)
            .await
            .unwrap(),
        1
    );
    wait_for("plain pair alive", || all_alive(&targets[0].pool, 2)).await;
    wait_for("keyed pair alive", || all_alive(&targets[1].pool, 2)).await;
}

#[tokio::test]
async fn start_rejects_bad_configs() {
    let stop = CancellationToken::new();
    let mut config = fast("s");
    config.advertise = "0.0.0.0:7000".parse().unwrap();
    assert!(matches!(
        Pool::start(config, stop.clone()).await,
        Err(StartError::UnspecifiedAdvertise(_))
    ));
    let mut config = fast("s");
    config.tags.insert("blob".into(), "x".repeat(1000));
    assert!(matches!(
        Pool::start(config, stop.clone()).await,
        Err(StartError::TagsTooLarge { .. })
    ));
    let mut config = fast("s");
    config.probe_timeout = config.probe_interval;
    assert!(matches!(
        Pool::start(config, stop.clone()).await,
        Err(StartError::InvalidConfig(_))
    ));
    // Port 0 in advertise means the bound port.
    let agent = spawn(fast("s")).await;
    assert_eq!(agent.pool.members()[0].addr, agent.pool.local_addr());
}

#[test]
fn keys_and_keyring_files() {
    assert!(matches!(Keyring::new("%%%"), Err(KeyError::Base64(_))));
    match Keyring::new("AAAA") {
        Err(e @ KeyError::Length(3)) => assert!(e.to_string().contains("16, 24 or 32")),
        other => panic!("{other:?}"),
    }
    for len in [16usize, 24, 32] {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(vec![1u8; len]);
        assert_eq!(Keyring::new(&key).unwrap().primary(), key);
    }
    let path = temp_path("local.keyring");
    assert!(Keyring::load(&path).unwrap().is_none());
    let (k1, k2) = (generate_key(), generate_key());
    std::fs::write(&path, format!("[\"{k1}\", \"{k2}\"]")).unwrap();
    let ring = Keyring::load(&path).unwrap().unwrap();
    assert_eq!(ring.keys(), vec![k1.clone(), k2.clone()]);
    assert_eq!(ring.primary(), k1);
    ring.with_primary(&k2).unwrap().save(&path).unwrap();
    assert_eq!(Keyring::load(&path).unwrap().unwrap().keys(), vec![k2, k1]);
    std::fs::write(&path, "{}").unwrap();
    assert!(matches!(Keyring::load(&path), Err(KeyError::Format { .. })));
    std::fs::write(&path, "[]").unwrap();
    assert!(matches!(Keyring::load(&path), Err(KeyError::Empty)));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());

    let mut sealed = Vec::new();
    let mut opened = Vec::new();
    assert!(ring.seal(b"hello", &mut sealed));
    assert_eq!(sealed.len(), 5 + keyring::OVERHEAD);
    assert!(ring.open(&sealed, &mut opened));
    assert_eq!(opened, b"hello");
    let other = Keyring::new(&generate_key()).unwrap();
    assert!(!other.open(&sealed, &mut opened));
}

#[test]
fn statuses_follow_consul() {
    let names: Vec<String> = [Status::Alive, Status::Leaving, Status::Left, Status::Failed]
        .iter()
        .map(|s| format!("{s}={}", *s as u8))
        .collect();
    assert_eq!(names, ["alive=1", "leaving=2", "left=3", "failed=4"]);
}

#[tokio::test]
async fn join_names_each_failure() {
    let agent = spawn(fast("n0")).await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addrs = [
        agent.pool.local_addr(),
        "127.0.0.1:0".parse().unwrap(),
        silent.local_addr().unwrap(),
    ];
    match agent.pool.join(&addrs, Duration::from_millis(300)).await {
        Err(e @ JoinError::Failed(_)) => {
            let JoinError::Failed(why) = &e else {
                unreachable!()
            };
            assert_eq!(why.len(), 3);
            assert_eq!(why[0].1, JoinFailure::Ourselves);
            assert!(matches!(why[1].1, JoinFailure::Send(_)), "{e}");
            assert_eq!(why[2].1, JoinFailure::NoAnswer);
            assert!(e.to_string().contains("no answer"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        agent.pool.join(&[], JOIN).await,
        Err(JoinError::NoAddresses)
    ));
}
