//! The task that drives foca: socket, timers, operator commands, and the
//! member list derived from foca's notifications.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, PostcardCodec, Timer};
use rand_foca::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::identity::NodeId;
use super::keyring::{Keyring, OVERHEAD, VERSION_AES_GCM, VERSION_PLAIN};
use super::notice::{Handler, Notice};
use super::{
    Config, Inner, JoinError, JoinFailure, KeyState, Member, Pool, Shared, StartError, Status,
};

type Swim = Foca<NodeId, PostcardCodec, StdRng, Handler>;

/// UDP payload budget, envelope included: below a 1500-byte Ethernet MTU
/// with room for IP/UDP headers (memberlist uses 1400 too).
const PACKET_SIZE: usize = 1400;
/// Every packet header holds two identities; bounding them leaves room
/// for updates and broadcasts (Serf bounds tags to 512 bytes).
const MAX_IDENTITY: usize = 400;
/// Granularity of join deadlines, leave, and reaping.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// After joining, this agent announces itself to a few random members at every step for a
/// while: each answer (a foca feed) lists about ten members, so a newcomer learns the whole
/// pool in seconds instead of from one feed every 30 s (memberlist gets there with a full-state
/// push/pull over TCP on join).
const CATCH_UP_FOR: Duration = Duration::from_secs(5);
const CATCH_UP_EVERY: Duration = Duration::from_millis(200);
const CATCH_UP_FANOUT: usize = 4;
/// While no other member is alive, foca is idle and its own announces to failed members stop
/// with it (they run only while connected). An agent alone then announces itself this often
/// to up to `RECONNECT_FANOUT` members it lists as failed or left, so a pool whose other
/// members all restarted at once (every server of a client agent) comes back together.
/// A client agent that sees no alive server does the same towards the servers it lists as
/// failed or left, even while other client agents keep foca busy: Consul's servers rejoin the
/// members their Serf snapshot lists when they restart, Beacon's servers restart knowing only
/// each other, and the clients would otherwise find them at the next 30 s reconnect.
const RECONNECT_ALONE: Duration = Duration::from_secs(5);
const RECONNECT_FANOUT: usize = 2;
/// At most one warning per peer and kind of problem per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Bound on the rate-limiting table (spoofed sources could fill it).
const MAX_WARNED: usize = 1024;
/// Bound on remembered leave intents.
const MAX_INTENTS: usize = 4096;

pub(crate) enum Command {
    Join {
        addrs: Vec<SocketAddr>,
        timeout: Duration,
        reply: oneshot::Sender<Result<usize, JoinError>>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    ForceLeave {
        name: String,
        prune: bool,
    },
    /// A keyring change already applied locally by the [`Pool`] handle.
    Broadcast(Notice),
}

pub(crate) async fn start(mut config: Config, stop: CancellationToken) -> Result<Pool, StartError> {
    validate(&config)?;
    if config.advertise.ip().is_unspecified() {
        return Err(StartError::UnspecifiedAdvertise(config.advertise));
    }
    let bind_error = |source| StartError::Bind {
        addr: config.bind,
        source,
    };
    let socket = UdpSocket::bind(config.bind).await.map_err(bind_error)?;
    let local_addr = socket.local_addr().map_err(bind_error)?;
    if config.advertise.port() == 0 {
        config.advertise.set_port(local_addr.port());
    }

    let id = NodeId::new(config.node_name.clone(), config.advertise, &config.tags);
    let size = postcard::to_stdvec(&id)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_IDENTITY {
        return Err(StartError::TagsTooLarge {
            size,
            max: MAX_IDENTITY,
        });
    }

    let since = Instant::now();
    let mut members = HashMap::new();
    members.insert(
        id.name.clone(),
        Entry {
            id: id.clone(),
            status: Status::Alive,
            since,
        },
    );
    let shared = Arc::new(Shared {
        members: ArcSwap::from_pointee(Vec::new()),
        changes: watch::channel(0).0,
        keyring: ArcSwapOption::new(config.keyring.clone().map(Arc::new)),
        keys: Mutex::new(KeyState {
            version: (0, config.node_name.clone()),
            floor: 0,
            known: config
                .keyring
                .iter()
                .flat_map(|k| k.known())
                .collect::<BTreeMap<_, _>>(),
            reports: BTreeMap::new(),
        }),
        key_ops: Mutex::new(()),
        keyring_file: config.keyring_file.clone(),
        persisted: Arc::new(Mutex::new((0, String::new()))),
    });

    let notices = Arc::new(Mutex::new(Vec::new()));
    let foca = Foca::with_custom_broadcast(
        id.clone(),
        foca_config(&config, 1),
        rand_foca::make_rng::<StdRng>(),
        PostcardCodec,
        Handler::new(notices.clone()),
    );
    let (commands, command_rx) = mpsc::unbounded_channel();
    let socket = Arc::new(socket);
    let mut driver = Driver {
        foca,
        rt: AccumulatingRuntime::new(),
        socket,
        shared: shared.clone(),
        local_addr,
        notices,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        members,
        intents: HashMap::new(),
        joins: Vec::new(),
        leaving: None,
        left: false,
        warned: HashMap::new(),
        scale_n: 1,
        report_version: 0,
        dirty: true,
        catch_up: None,
        alone: None,
        server_lookout: TokioInstant::now(),
        send_buf: Vec::with_capacity(PACKET_SIZE),
        open_buf: Vec::with_capacity(PACKET_SIZE),
        config,
    };
    driver.publish();
    info!(
        name = %id.name,
        bind = %local_addr,
        advertise = %id.addr,
        encrypted = driver.shared.keyring.load().is_some(),
        "gossip pool started"
    );
    let span = tracing::info_span!("gossip", node = %id.name);
    tokio::spawn(driver.run(stop, command_rx).instrument(span));

    Ok(Pool {
        inner: Arc::new(Inner {
            shared,
            commands,
            local_addr,
            name: id.name,
        }),
    })
}

fn validate(config: &Config) -> Result<(), StartError> {
    let bad = |why: &str| Err(StartError::InvalidConfig(why.to_string()));
    if config.node_name.is_empty() {
        return bad("node_name is empty");
    }
    if config.probe_interval.is_zero() || config.probe_timeout.is_zero() {
        return bad("probe_interval and probe_timeout must be positive");
    }
    if config.probe_timeout >= config.probe_interval {
        return bad("probe_timeout must be shorter than probe_interval");
    }
    if config.gossip_interval.is_zero() || config.gossip_nodes == 0 {
        return bad("gossip_interval and gossip_nodes must be positive");
    }
    if config.suspicion_mult == 0 || config.retransmit_mult == 0 {
        return bad("suspicion_mult and retransmit_mult must be positive");
    }
    Ok(())
}

/// foca settings for `n` alive members (this agent included), scaled as
/// memberlist scales them.
fn foca_config(config: &Config, n: usize) -> foca::Config {
    let n = n.max(1) as f64;
    let suspicion = config
        .probe_interval
        .mul_f64(f64::from(config.suspicion_mult) * n.log10().max(1.0));
    let max_tx = (f64::from(config.retransmit_mult) * (n + 1.0).log10().ceil()).clamp(1.0, 255.0);
    let one = NonZeroUsize::MIN;
    foca::Config {
        probe_period: config.probe_interval,
        probe_rtt: config.probe_timeout,
        num_indirect_probes: NonZeroUsize::new(3).unwrap_or(one),
        max_transmissions: NonZeroU8::new(max_tx as u8).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: suspicion,
        // Identities renew on every restart, so this only bounds how long
        // foca remembers a dead generation; outlive our own listing.
        remove_down_after: Some(
            config
                .tombstone_timeout
                .max(config.reconnect_timeout)
                .max(Duration::from_secs(1)),
        ),
        max_packet_size: NonZeroUsize::new(PACKET_SIZE - OVERHEAD).unwrap_or(one),
        notify_down_members: true,
        // memberlist's push/pull every 30 s plays this role: it heals
        // partial views.
        periodic_announce: Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: one,
        }),
        // Lets split pools find each other again, and brings back servers that restarted
        // while this agent saw them failed (Serf's reconnect every `reconnect_interval`, 30 s).
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::new(2).unwrap_or(one),
        }),
        periodic_gossip: Some(PeriodicParams {
            frequency: config.gossip_interval,
            num_members: NonZeroUsize::new(config.gossip_nodes).unwrap_or(one),
        }),
    }
}

struct Entry {
    id: NodeId,
    status: Status,
    since: Instant,
}

struct Scheduled {
    at: TokioInstant,
    seq: u64,
    timer: Timer<NodeId>,
}

// Due time first; at equal times foca's own order (indirect probe before
// the next probe, see foca issue #26), then submission order.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.timer.cmp(&other.timer))
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Attempt {
    Waiting,
    Answered,
    Failed(JoinFailure),
}

struct JoinWaiter {
    addrs: Vec<(SocketAddr, Attempt)>,
    deadline: TokioInstant,
    grace: Option<TokioInstant>,
    next_resend: TokioInstant,
    reply: oneshot::Sender<Result<usize, JoinError>>,
}

struct Leaving {
    at: TokioInstant,
    replies: Vec<oneshot::Sender<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Warn {
    Plain,
    Undecryptable,
    NoKey,
    Malformed,
    Send,
}

struct Driver {
    foca: Swim,
    rt: AccumulatingRuntime<NodeId>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    config: Config,
    local_addr: SocketAddr,
    /// Broadcasts the handler inside foca accepted, to apply here.
    notices: Arc<Mutex<Vec<Notice>>>,
    /// One scheduler for every foca timer, so they are delivered in order.
    timers: BinaryHeap<Reverse<Scheduled>>,
    timer_seq: u64,
    /// By name; this agent included.
    members: HashMap<String, Entry>,
    /// Generation of members that announced (or were forced) to leave:
    /// their "down" becomes `Left`, not `Failed`.
    intents: HashMap<String, u64>,
    joins: Vec<JoinWaiter>,
    leaving: Option<Leaving>,
    left: bool,
    warned: HashMap<(SocketAddr, Warn), TokioInstant>,
    /// Pool size foca's settings were last scaled for.
    scale_n: usize,
    report_version: u64,
    /// The published member list is stale.
    dirty: bool,
    /// Until when, and when next, to announce to random members (see `CATCH_UP_FOR`).
    catch_up: Option<(TokioInstant, TokioInstant)>,
    /// While no other member is alive: when next to announce to failed ones (`RECONNECT_ALONE`).
    alone: Option<TokioInstant>,
    /// On a client agent: when next to look for failed servers to announce to, should none be
    /// alive (`RECONNECT_ALONE`).
    server_lookout: TokioInstant,
    send_buf: Vec<u8>,
    open_buf: Vec<u8>,
}

impl Driver {
    async fn run(
        mut self,
        stop: CancellationToken,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        // Large enough for any datagram, so oversized ones are seen whole
        // and rejected instead of being silently truncated.
        let mut buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let socket = self.socket.clone();
        let mut commands_open = true;
        self.publish_report();
        self.after_foca().await;

        loop {
            let next_timer = self.timers.peek().map(|Reverse(s)| s.at);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => commands_open = false,
                },
                _ = sleep_until_opt(next_timer), if next_timer.is_some() => self.fire_timers().await,
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let m = &crate::metrics::GOSSIP;
                        m.packets_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        m.bytes_received.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                        self.packet(&buf[..len], from).await
                    }
                    // Some platforms report ICMP errors of earlier sends here.
                    Err(e) => debug!(error = %e, "gossip socket receive error"),
                },
                _ = tick.tick() => self.housekeeping().await,
            }
        }

        for waiter in self.joins.drain(..) {
            let _ = waiter.reply.send(Err(JoinError::Stopped));
        }
        info!(name = %self.config.node_name, "gossip pool stopped");
    }

    fn local_name(&self) -> &str {
        &self.config.node_name
    }

    // ---- network ----

    async fn packet(&mut self, data: &[u8], from: SocketAddr) {
        if self.left {
            return;
        }
        let keyring = self.shared.keyring.load_full();
        let mut plain = std::mem::take(&mut self.open_buf);
        let usable = match (data.first().copied(), keyring.as_deref()) {
            (Some(VERSION_AES_GCM), Some(ring)) => {
                let opened = ring.open(data, &mut plain);
                if !opened && self.should_warn(from, Warn::Undecryptable) {
                    warn!(
                        from = %from,
                        "could not decrypt gossip packet from {from} with any installed key (wrong gossip key?)"
                    );
                }
                opened
            }
            (Some(VERSION_AES_GCM), None) => {
                if self.should_warn(from, Warn::NoKey) {
                    warn!(
                        from = %from,
                        "gossip packet from {from} looks encrypted but no encryption key is configured here (a keyed agent, or not a gossip packet)"
                    );
                }
                false
            }
            (Some(VERSION_PLAIN), Some(_)) => {
                if self.should_warn(from, Warn::Plain) {
                    warn!(
                        from = %from,
                        "unencrypted gossip packet from {from} dropped: the sender does not encrypt but gossip encryption is enabled here"
                    );
                }
                false
            }
            (Some(VERSION_PLAIN), None) => {
                plain.clear();
                plain.extend_from_slice(&data[1..]);
                true
            }
            _ => {
                if self.should_warn(from, Warn::Malformed) {
                    debug!(from = %from, len = data.len(), "dropped malformed gossip packet");
                }
                false
            }
        };
        if usable {
            match self.foca.handle_data(&plain, &mut self.rt) {
                Ok(()) => self.answered(from),
                Err(e) => {
                    if self.should_warn(from, Warn::Malformed) {
                        debug!(from = %from, error = %e, "dropped gossip packet");
                    }
                }
            }
        }
        self.open_buf = plain;
        if usable {
            self.after_foca().await;
        }
    }

    async fn send(&mut self, to: SocketAddr, data: &[u8]) {
        let keyring = self.shared.keyring.load_full();
        let mut out = std::mem::take(&mut self.send_buf);
        let ready = match keyring.as_deref() {
            Some(ring) => ring.seal(data, &mut out),
            None => {
                out.clear();
                out.push(VERSION_PLAIN);
                out.extend_from_slice(data);
                true
            }
        };
        let result = if ready {
            let m = &crate::metrics::GOSSIP;
            m.packets_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            m.bytes_sent
                .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.socket.send_to(&out, to).await.map(drop)
        } else {
            Err(std::io::Error::other("encryption failed"))
        };
        self.send_buf = out;
        if let Err(e) = result {
            if self.should_warn(to, Warn::Send) {
                debug!(to = %to, error = %e, "could not send gossip packet");
            }
            for waiter in &mut self.joins {
                for (addr, attempt) in &mut waiter.addrs {
                    if *addr == to && *attempt == Attempt::Waiting {
                        *attempt = Attempt::Failed(JoinFailure::Send(e.to_string()));
                    }
                }
            }
            self.check_joins();
        }
    }

    fn should_warn(&mut self, peer: SocketAddr, kind: Warn) -> bool {
        let now = TokioInstant::now();
        let full = self.warned.len() >= MAX_WARNED;
        match self.warned.get_mut(&(peer, kind)) {
            Some(at) if now.duration_since(*at) < WARN_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None if full => false,
            None => {
                self.warned.insert((peer, kind), now);
                true
            }
        }
    }

    /// Reacts to everything the last foca call produced. Applying
    /// notices may add broadcasts, hence the loop.
    async fn after_foca(&mut self) {
        loop {
            while let Some((to, data)) = self.rt.to_send() {
                self.send(to.addr, &data).await;
            }
            let now = TokioInstant::now();
            while let Some((after, timer)) = self.rt.to_schedule() {
                self.timer_seq += 1;
                self.timers.push(Reverse(Scheduled {
                    at: now + after,
                    seq: self.timer_seq,
                    timer,
                }));
            }
            while let Some(notification) = self.rt.to_notify() {
                self.notification(notification);
            }
            let notices = match self.notices.lock() {
                Ok(mut queue) => std::mem::take(&mut *queue),
                Err(_) => Vec::new(),
            };
            let had_notices = !notices.is_empty();
            for notice in notices {
                self.notice(notice);
            }
            if !had_notices && self.rt.backlog() == 0 {
                break;
            }
        }
        self.rescale();
        if self.dirty {
            self.publish();
        }
    }

    async fn fire_timers(&mut self) {
        let now = TokioInstant::now();
        while self.timers.peek().is_some_and(|Reverse(s)| s.at <= now) {
            let Some(Reverse(due)) = self.timers.pop() else {
                break;
            };
            if self.left {
                continue;
            }
            if let Err(e) = self.foca.handle_timer(due.timer, &mut self.rt) {
                debug!(error = %e, "gossip timer");
            }
            self.after_foca().await;
        }
    }

    // ---- commands ----

    async fn command(&mut self, command: Command) {
        match command {
            Command::Join {
                addrs,
                timeout,
                reply,
            } => self.join(addrs, timeout, reply).await,
            Command::Leave { reply } => self.leave(reply).await,
            Command::ForceLeave { name, prune } => {
                let Some(entry) = self.members.get(&name) else {
                    warn!(member = %name, "force-leave: no such member");
                    return;
                };
                info!(member = %name, prune, "force-leave requested");
                let notice = Notice::ForceLeave {
                    name,
                    bump: entry.id.bump,
                    prune,
                };
                self.broadcast(&notice);
                if let Err(e) = self.foca.gossip(&mut self.rt) {
                    debug!(error = %e, "gossip");
                }
                self.after_foca().await;
            }
            Command::Broadcast(notice) => {
                self.broadcast(&notice);
                if matches!(notice, Notice::KeySet { .. }) {
                    info!("gossip keyring changed locally");
                    self.publish_report();
                }
                self.after_foca().await;
            }
        }
    }

    async fn join(
        &mut self,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
        reply: oneshot::Sender<Result<usize, JoinError>>,
    ) {
        if self.left || self.leaving.is_some() {
            let _ = reply.send(Err(JoinError::Left));
            return;
        }
        let now = TokioInstant::now();
        let advertise = self.foca.identity().addr;
        let attempts = addrs
            .into_iter()
            .map(|addr| {
                if addr == self.local_addr || addr == advertise {
                    (addr, Attempt::Failed(JoinFailure::Ourselves))
                } else {
                    (addr, Attempt::Waiting)
                }
            })
            .collect::<Vec<_>>();
        let targets: Vec<SocketAddr> = attempts
            .iter()
            .filter(|(_, a)| *a == Attempt::Waiting)
            .map(|(addr, _)| *addr)
            .collect();
        self.joins.push(JoinWaiter {
            addrs: attempts,
            deadline: now + timeout,
            grace: None,
            next_resend: now + self.resend_every(),
            reply,
        });
        self.announce(&targets).await;
        self.check_joins();
    }

    fn resend_every(&self) -> Duration {
        self.config.probe_interval.max(Duration::from_millis(100))
    }

    async fn announce(&mut self, targets: &[SocketAddr]) {
        for addr in targets {
            if let Err(e) = self.foca.announce(NodeId::placeholder(*addr), &mut self.rt) {
                debug!(to = %addr, error = %e, "announce");
            }
            self.after_foca().await;
        }
    }

    fn answered(&mut self, from: SocketAddr) {
        if self.joins.is_empty() {
            return;
        }
        let grace = TokioInstant::now() + self.config.probe_interval;
        for waiter in &mut self.joins {
            for (addr, attempt) in &mut waiter.addrs {
                if *addr == from && *attempt == Attempt::Waiting {
                    *attempt = Attempt::Answered;
                    waiter.grace.get_or_insert(grace);
                }
            }
        }
        self.check_joins();
    }

    fn check_joins(&mut self) {
        let now = TokioInstant::now();
        let mut i = 0;
        while i < self.joins.len() {
            let waiter = &self.joins[i];
            let settled = waiter.addrs.iter().all(|(_, a)| *a != Attempt::Waiting);
            if !(settled || now >= waiter.deadline || waiter.grace.is_some_and(|g| now >= g)) {
                i += 1;
                continue;
            }
            let waiter = self.joins.swap_remove(i);
            let answered = waiter
                .addrs
                .iter()
                .filter(|(_, a)| *a == Attempt::Answered)
                .count();
            let failures: Vec<(SocketAddr, JoinFailure)> = waiter
                .addrs
                .into_iter()
                .filter_map(|(addr, a)| match a {
                    Attempt::Answered => None,
                    Attempt::Waiting => Some((addr, JoinFailure::NoAnswer)),
                    Attempt::Failed(why) => Some((addr, why)),
                })
                .collect();
            for (addr, why) in &failures {
                warn!(addr = %addr, "gossip join: {addr}: {why}");
            }
            let result = if answered > 0 {
                info!(answered, "joined gossip pool");
                Ok(answered)
            } else {
                Err(JoinError::Failed(failures))
            };
            let _ = waiter.reply.send(result);
        }
    }

    async fn leave(&mut self, reply: oneshot::Sender<()>) {
        if self.left {
            let _ = reply.send(());
            return;
        }
        if let Some(leaving) = &mut self.leaving {
            leaving.replies.push(reply);
            return;
        }
        let me = self.foca.identity().clone();
        info!(name = %me.name, "leaving gossip pool");
        self.broadcast(&Notice::Leave {
            name: me.name.clone(),
            bump: me.bump,
        });
        self.set_local_status(Status::Leaving);
        self.leaving = Some(Leaving {
            at: TokioInstant::now() + self.config.leave_propagate_delay,
            replies: vec![reply],
        });
        if self.foca.num_members() == 0 {
            self.finish_leave().await;
            return;
        }
        if let Err(e) = self.foca.gossip(&mut self.rt) {
            debug!(error = %e, "gossip");
        }
        self.after_foca().await;
    }

    async fn finish_leave(&mut self) {
        let Some(leaving) = self.leaving.take() else {
            return;
        };
        // Set first: leaving makes foca report itself defunct, which is
        // only worth a warning when it was not asked for.
        self.left = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            debug!(error = %e, "leave");
        }
        self.after_foca().await;
        self.timers.clear();
        self.set_local_status(Status::Left);
        self.publish();
        info!(name = %self.config.node_name, "left gossip pool");
        for reply in leaving.replies {
            let _ = reply.send(());
        }
    }

    fn set_local_status(&mut self, status: Status) {
        let name = self.config.node_name.clone();
        if let Some(entry) = self.members.get_mut(&name)
            && entry.status != status
        {
            entry.status = status;
            entry.since = Instant::now();
            self.dirty = true;
        }
    }

    fn broadcast(&mut self, notice: &Notice) {
        let result = postcard::to_stdvec(notice)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.foca.add_broadcast(&bytes).map_err(|e| e.to_string()));
        if let Err(e) = result {
            warn!(error = %e, "could not queue gossip broadcast");
        }
    }

    /// Tells the pool which keys this agent holds (Consul answers
    /// `keyring -list` by querying every member; here members volunteer
    /// it, again whenever someone joins so newcomers learn it).
    fn publish_report(&mut self) {
        let Some(ring) = self.shared.keyring.load_full() else {
            return;
        };
        self.report_version += 1;
        let me = self.foca.identity().clone();
        let keyring_version = self.shared.keys.lock().map(|k| k.version.0).unwrap_or(0);
        self.broadcast(&Notice::KeyReport {
            name: me.name,
            bump: me.bump,
            version: self.report_version,
            keys: ring.fingerprints(),
            keyring_version,
        });
    }

    // ---- periodic ----

    async fn housekeeping(&mut self) {
        let now = TokioInstant::now();
        if self.leaving.as_ref().is_some_and(|l| now >= l.at) {
            self.finish_leave().await;
        }

        let resend = self.resend_every();
        let mut targets = Vec::new();
        for waiter in &mut self.joins {
            if now >= waiter.next_resend {
                waiter.next_resend = now + resend;
                targets.extend(
                    waiter
                        .addrs
                        .iter()
                        .filter(|(_, a)| *a == Attempt::Waiting)
                        .map(|(addr, _)| *addr),
                );
            }
        }
        if !targets.is_empty() {
            self.announce(&targets).await;
        }
        self.check_joins();
        self.catch_up(now).await;
        self.reconnect_alone(now).await;
        self.reconnect_servers(now).await;

        self.reap();
        self.warned
            .retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        if self.dirty {
            self.publish();
        }
    }

    /// See `CATCH_UP_FOR`.
    async fn catch_up(&mut self, now: TokioInstant) {
        let Some((until, next)) = self.catch_up else {
            return;
        };
        if now >= until {
            self.catch_up = None;
            return;
        }
        if now < next {
            return;
        }
        self.catch_up = Some((until, now + CATCH_UP_EVERY));
        self.announce_to_random(CATCH_UP_FANOUT, |e| e.status == Status::Alive)
            .await;
    }

    /// Announces this agent to up to `fanout` other members picked at random among those
    /// `keep` accepts.
    async fn announce_to_random(&mut self, fanout: usize, keep: impl Fn(&Entry) -> bool) {
        let local = self.config.node_name.clone();
        let mut candidates: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(name, e)| **name != local && keep(e))
            .map(|(_, e)| e.id.addr)
            .collect();
        let mut targets = Vec::with_capacity(fanout);
        while targets.len() < fanout && !candidates.is_empty() {
            let i = (rand_foca::random::<u64>() % candidates.len() as u64) as usize;
            targets.push(candidates.swap_remove(i));
        }
        self.announce(&targets).await;
    }

    /// See `RECONNECT_ALONE`.
    async fn reconnect_alone(&mut self, now: TokioInstant) {
        match self.alone {
            Some(at) if now >= at && !self.left && self.leaving.is_none() => {}
            _ => return,
        }
        self.alone = Some(now + RECONNECT_ALONE);
        self.announce_to_random(RECONNECT_FANOUT, |e| {
            matches!(e.status, Status::Failed | Status::Left)
        })
        .await;
    }

    /// See `RECONNECT_ALONE`.
    async fn reconnect_servers(&mut self, now: TokioInstant) {
        let is_server = |id: &NodeId| id.tags.iter().any(|(k, v)| k == "role" && v == "consul");
        if now < self.server_lookout
            || self.left
            || self.leaving.is_some()
            || self.config.tags.get("role").is_some_and(|r| r == "consul")
        {
            return;
        }
        self.server_lookout = now + RECONNECT_ALONE;
        if self
            .members
            .values()
            .any(|e| e.status == Status::Alive && is_server(&e.id))
        {
            return;
        }
        self.announce_to_random(RECONNECT_FANOUT, |e| {
            matches!(e.status, Status::Failed | Status::Left) && is_server(&e.id)
        })
        .await;
    }

    /// Serf's reaper: failed members go after `reconnect_timeout`, left
    /// ones after `tombstone_timeout`.
    fn reap(&mut self) {
        let now = Instant::now();
        let local = self.config.node_name.clone();
        let (reconnect, tombstone) = (self.config.reconnect_timeout, self.config.tombstone_timeout);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(name, e)| {
                **name != local
                    && match e.status {
                        Status::Failed => now.duration_since(e.since) >= reconnect,
                        Status::Left => now.duration_since(e.since) >= tombstone,
                        Status::Alive | Status::Leaving => false,
                    }
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.forget(&name, "member reaped");
        }
    }

    fn forget(&mut self, name: &str, why: &str) {
        if let Some(entry) = self.members.remove(name) {
            info!(member = %name, addr = %entry.id.addr, status = %entry.status, "{why}");
            self.dirty = true;
        }
        self.intents.remove(name);
        if let Ok(mut keys) = self.shared.keys.lock() {
            keys.reports.remove(name);
        }
    }

    fn rescale(&mut self) {
        let n = self.foca.num_members() + 1;
        if n == self.scale_n {
            return;
        }
        self.scale_n = n;
        if let Err(e) = self.foca.set_config(foca_config(&self.config, n)) {
            warn!(error = %e, "could not rescale gossip settings");
        }
    }

    fn publish(&mut self) {
        self.dirty = false;
        let mut list: Vec<Member> = self
            .members
            .values()
            .map(|e| Member {
                name: e.id.name.clone(),
                addr: e.id.addr,
                tags: e.id.tag_map(),
                status: e.status,
                since: e.since,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.shared.members.store(Arc::new(list));
        self.shared.changes.send_modify(|v| *v += 1);
    }

    // ---- foca notifications and broadcasts ----

    fn notification(&mut self, notification: OwnedNotification<NodeId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                if id.name == self.local_name() {
                    if id.addr != self.foca.identity().addr {
                        warn!(
                            member = %id.name, addr = %id.addr,
                            "another agent in the gossip pool uses this agent's node name: node names must be unique; its services and checks would overwrite this node's"
                        );
                    }
                    return;
                }
                // Node names are unique in a pool (Consul refuses a conflicting node): an
                // agent claiming the name of an alive member elsewhere is not listed, so it
                // cannot take that node out of the catalog.
                if let Some(existing) = self
                    .members
                    .get(&id.name)
                    .filter(|e| e.status == Status::Alive && e.id.addr != id.addr)
                {
                    warn!(
                        member = %id.name, addr = %id.addr, alive_at = %existing.id.addr,
                        "node name conflict: an alive member already has this name; ignoring the newcomer (node names must be unique)"
                    );
                    return;
                }
                let status = if self.intents.get(&id.name) == Some(&id.bump) {
                    Status::Leaving
                } else {
                    Status::Alive
                };
                // Counts as an answer to a join even when replies come
                // from another source address than the one joined.
                self.answered(id.addr);
                self.set_member(id, status);
                // A newcomer has none of the key reports sent so far.
                self.publish_report();
            }
            OwnedNotification::MemberDown(id) => {
                if id.name == self.local_name() {
                    return;
                }
                if self.members.get(&id.name).is_some_and(|e| e.id != id) {
                    debug!(member = %id.name, "down notice for an older generation");
                    return;
                }
                let status = if self.intents.get(&id.name) == Some(&id.bump) {
                    Status::Left
                } else {
                    Status::Failed
                };
                let name = id.name.clone();
                self.set_member(id, status);
                // An agent of the same name that was ignored while this one was alive (it
                // moved to another address) takes the name over.
                let successor = self
                    .foca
                    .iter_members()
                    .map(|m| m.id().clone())
                    .find(|other| {
                        other.name == name
                            && self
                                .members
                                .get(&name)
                                .is_some_and(|e| e.id.addr != other.addr)
                    });
                if let Some(successor) = successor {
                    self.set_member(successor, Status::Alive);
                }
            }
            OwnedNotification::Rename(old, new) => {
                if new.name == self.local_name() {
                    return;
                }
                let mut status = Status::Alive;
                if old.name != new.name {
                    if let Some(e) = self.members.get(&old.name).filter(|e| e.id == old) {
                        status = e.status;
                        info!(
                            member = %old.name, replaced_by = %new.name, addr = %new.addr,
                            "member replaced by another at the same address"
                        );
                        self.members.remove(&old.name);
                        self.dirty = true;
                    }
                } else if let Some(e) = self.members.get(&old.name) {
                    status = e.status;
                }
                match self.members.get_mut(&new.name) {
                    Some(entry) => {
                        entry.id = new;
                        self.dirty = true;
                    }
                    None => self.set_member(new, status),
                }
            }
            OwnedNotification::Active => {
                debug!("in contact with the gossip pool");
                let now = TokioInstant::now();
                self.catch_up = Some((now + CATCH_UP_FOR, now));
                self.alone = None;
            }
            OwnedNotification::Idle => {
                self.alone = Some(TokioInstant::now() + RECONNECT_ALONE);
                if !self.left && self.leaving.is_none() {
                    info!("no other alive member in the gossip pool")
                }
            }
            OwnedNotification::Defunct => {
                if !self.left && self.leaving.is_none() {
                    warn!("this agent was declared down by the gossip pool and cannot rejoin");
                }
            }
            OwnedNotification::Rejoin(id) => {
                info!(
                    name = %id.name,
                    generation = id.bump,
                    "refuted being declared down: rejoined the gossip pool"
                );
                if let Some(entry) = self.members.get_mut(&id.name) {
                    entry.id = id;
                    self.dirty = true;
                }
                self.publish_report();
            }
        }
    }

    fn set_member(&mut self, id: NodeId, status: Status) {
        let now = Instant::now();
        let (name, addr) = (id.name.clone(), id.addr);
        let previous = match self.members.get_mut(&name) {
            Some(entry) => {
                let previous = entry.status;
                if entry.status != status || entry.id != id {
                    entry.since = now;
                }
                entry.status = status;
                entry.id = id;
                Some(previous)
            }
            None => {
                self.members.insert(
                    name.clone(),
                    Entry {
                        id,
                        status,
                        since: now,
                    },
                );
                None
            }
        };
        self.dirty = true;
        if previous == Some(status) {
            return;
        }
        match status {
            Status::Alive => info!(member = %name, addr = %addr, "member joined"),
            Status::Leaving => info!(member = %name, addr = %addr, "member is leaving"),
            Status::Left => info!(member = %name, addr = %addr, "member left"),
            Status::Failed => warn!(member = %name, addr = %addr, "member failed"),
        }
    }

    fn remember_intent(&mut self, name: &str, bump: u64) {
        if self.intents.len() >= MAX_INTENTS && !self.intents.contains_key(name) {
            self.intents.clear();
        }
        let seen = self.intents.entry(name.to_string()).or_insert(bump);
        *seen = (*seen).max(bump);
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Leave { name, bump } => {
                if name == self.local_name() {
                    return;
                }
                self.remember_intent(&name, bump);
                let Some(entry) = self.members.get(&name).filter(|e| e.id.bump == bump) else {
                    return;
                };
                let next = match entry.status {
                    Status::Alive => Status::Leaving,
                    Status::Failed => Status::Left,
                    other => other,
                };
                let id = entry.id.clone();
                self.set_member(id, next);
            }
            Notice::ForceLeave { name, bump, prune } => {
                if name == self.local_name() {
                    warn!("ignoring a force-leave of this agent: it is alive");
                    return;
                }
                self.remember_intent(&name, bump);
                let Some(entry) = self.members.get(&name).filter(|e| e.id.bump == bump) else {
                    return;
                };
                if matches!(entry.status, Status::Failed | Status::Leaving) {
                    let id = entry.id.clone();
                    info!(member = %name, "member force-left");
                    self.set_member(id, Status::Left);
                }
                if prune
                    && self
                        .members
                        .get(&name)
                        .is_some_and(|e| e.status == Status::Left)
                {
                    self.forget(&name, "member pruned");
                }
            }
            Notice::KeyReport {
                name,
                keys,
                keyring_version,
                ..
            } => {
                if name == self.local_name() {
                    return;
                }
                if let Ok(mut state) = self.shared.keys.lock() {
                    state.floor = state.floor.max(keyring_version);
                    if state.reports.len() >= MAX_INTENTS && !state.reports.contains_key(&name) {
                        state.reports.clear();
                    }
                    state.reports.insert(name, keys);
                }
            }
            Notice::KeySet {
                version,
                origin,
                keys,
            } => self.adopt_keyring(version, origin, keys),
        }
    }

    /// Applies a keyring change made elsewhere in the pool, if newer than
    /// ours, and persists it.
    fn adopt_keyring(&mut self, version: u64, origin: String, keys: Vec<Vec<u8>>) {
        let Ok(mut state) = self.shared.keys.lock() else {
            return;
        };
        if (version, &origin) <= (state.version.0, &state.version.1) {
            return;
        }
        if self.shared.keyring.load().is_none() {
            warn!(origin = %origin, "ignoring a gossiped keyring change: encryption is not enabled here");
            return;
        }
        let ring = match Keyring::from_raw_keys(keys) {
            Ok(ring) => ring,
            Err(e) => {
                warn!(origin = %origin, error = %e, "ignoring an invalid gossiped keyring");
                return;
            }
        };
        state.version = (version, origin.clone());
        state.known.extend(ring.known());
        let ring = Arc::new(ring);
        self.shared.keyring.store(Some(ring.clone()));
        drop(state);
        self.persist(ring, (version, origin.clone()));
        info!(origin = %origin, "gossip keyring changed by {origin}");
        self.publish_report();
    }
}

impl Driver {
    /// Writes a gossiped keyring to `keyring_file` on the blocking pool:
    /// file I/O must not stall the driver.
    fn persist(&self, ring: Arc<Keyring>, version: (u64, String)) {
        let Some(path) = self.shared.keyring_file.clone() else {
            return;
        };
        let persisted = self.shared.persisted.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(mut written) = persisted.lock() else {
                return;
            };
            if version <= *written {
                return;
            }
            match ring.save(&path) {
                Ok(()) => *written = version,
                Err(e) => warn!(error = %e, "could not persist the gossip keyring"),
            }
        });
    }
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
