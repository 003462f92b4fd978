//! A client agent's materialized views: per service name it was asked about, the instances
//! with their nodes and checks, kept current by the servers' event stream
//! (`Method::ServiceStream`, served by `view::stream` on every server) and held in one
//! `View` that DNS and HTTP read as they read a server's catalog.
//!
//! A view starts on first use ([`Views::want`]) and is dropped after `idle` without use (a
//! query still reading it counts as use, [`Views::reading`]). It follows one server at a time
//! and moves to the next when its stream ends, fails, stays silent for [`SILENT_FOR`] (the
//! server sends heartbeats, so silence means a paused or unreachable server), or the server
//! says it knows no leader (it may be cut off, and behind). It resumes from the last index it
//! has: a server behind that index sends nothing until it catches up, so a view never goes
//! back, and each push is a whole snapshot of the name, so none is missed or applied twice.
//! The one exception is a snapshot from another cluster than the views' (the servers lost
//! their data and formed a new one, whose indexes do not compare with the old): then every
//! view is emptied and fetched afresh, as Consul's clients reset an index that goes
//! backwards. A subscription names its cluster, so such a server answers at once.
//! With no server reachable, every view keeps answering from what it has;
//! [`Views::oldest_contact`] says how old that is.
//!
//! Names come from the network (any DNS question starts a view), so views are bounded: at most
//! [`MAX_VIEWS`], and a view of a name with no instances goes after [`EMPTY_IDLE`] unused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use compact_str::CompactString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Servers;
use crate::catalog::{ServiceSnapshot, key};
use crate::model::Index;
use crate::raft::rpc::{Method, STREAM_HEARTBEAT, ServiceEvent, ServiceWatch, decode, encode};
use crate::view::View;

/// A stream that brings nothing, not even a heartbeat, for this long is given up.
pub const SILENT_FOR: Duration = Duration::from_millis(3 * STREAM_HEARTBEAT.as_millis() as u64);

/// Views one agent holds at most. Past it, [`Views::want`] says [`Want::Full`] for a name
/// without a view: DNS answers it from the agent's catalog copy and HTTP forwards it, so a
/// flood of made-up names cannot start unbounded followers and server subscriptions.
pub const MAX_VIEWS: usize = 2048;

/// A view whose name has no instances (or no snapshot yet) goes after this long unused, or
/// after `idle` when that is shorter: a name asked by mistake holds no subscription for 10 min.
pub const EMPTY_IDLE: Duration = Duration::from_secs(30);

/// At most one warning per this long that views lost their server (the rest go to debug).
const LOSS_WARN_EVERY: Duration = Duration::from_secs(10);

/// What [`Views::want`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The view has its first snapshot: read it.
    Ready,
    /// The view is waiting for its first snapshot (it may have just started).
    Starting,
    /// No view, and [`MAX_VIEWS`] are held: answer some other way.
    Full,
}

/// The materialized views of one client agent; cheap to clone.
#[derive(Clone)]
pub struct Views {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Servers,
    /// What DNS and HTTP read: every held name's instances, nodes and checks.
    catalog: View,
    /// Followers publish by load, change, store: one at a time, or one would undo another.
    publishing: Mutex<()>,
    held: Mutex<HashMap<CompactString, Arc<Held>>>,
    idle: Duration,
    stop: CancellationToken,
    /// Bumped when a snapshot comes from another cluster than the views' (`Inner::apply`):
    /// every follower subscribed before it starts again from nothing.
    epoch: AtomicU64,
    /// The cluster the views' indexes belong to (empty until the first snapshot that names
    /// one). A leaf: nothing else is locked while it is held.
    cluster_id: Mutex<String>,
    /// Counts since start, for metrics.
    resubscriptions: AtomicU64,
    /// When a view last warned that it lost its server (ms since `started`): one warning per
    /// [`LOSS_WARN_EVERY`] for the agent, not one per view, when a server goes.
    loss_warned_ms: AtomicU64,
    started: Instant,
    /// Where followers run: `want` is also called from DNS receive loops, which are threads
    /// outside the runtime.
    runtime: tokio::runtime::Handle,
}

/// One held name.
struct Held {
    /// When it was last asked for, in ms since `Inner::started`.
    used_ms: AtomicU64,
    /// When its server was last heard from (a snapshot or a heartbeat), in ms since
    /// `Inner::started`; 0 until the first snapshot.
    contact_ms: AtomicU64,
    /// The index of the snapshot it holds (0: none yet).
    index: AtomicU64,
    /// Queries reading the view now; it is not dropped under them.
    readers: AtomicUsize,
    /// Whether its last snapshot had no instances (true until the first): such a view goes
    /// after [`EMPTY_IDLE`].
    empty: AtomicBool,
    /// Whether its server said, at its last heartbeat, that it knows a leader.
    leader_known: AtomicBool,
    /// Woken at the first snapshot.
    ready: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Views {
    /// Views kept in `catalog`, fed from `servers`, each dropped after `idle` without use;
    /// every follower ends at `stop`. Call it inside the runtime the followers are to run on.
    pub fn new(servers: Servers, catalog: View, idle: Duration, stop: CancellationToken) -> Views {
        Views {
            inner: Arc::new(Inner {
                servers,
                catalog,
                publishing: Mutex::new(()),
                held: Mutex::new(HashMap::new()),
                idle,
                stop,
                epoch: AtomicU64::new(0),
                cluster_id: Mutex::new(String::new()),
                resubscriptions: AtomicU64::new(0),
                loss_warned_ms: AtomicU64::new(0),
                started: Instant::now(),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// The view DNS and HTTP read.
    pub fn catalog(&self) -> &View {
        &self.inner.catalog
    }

    /// Marks `name` (any case) used, starting its view if it has none and there is room
    /// ([`MAX_VIEWS`]).
    pub fn want(&self, name: &str) -> Want {
        let name = key(name);
        let now = self.inner.now_ms();
        let mut held = lock(&self.inner.held);
        if let Some(h) = held.get(&name) {
            h.used_ms.store(now, Ordering::Relaxed);
            return if h.index.load(Ordering::Acquire) > 0 {
                Want::Ready
            } else {
                Want::Starting
            };
        }
        if held.len() >= MAX_VIEWS {
            return Want::Full;
        }
        let h = Arc::new(Held {
            used_ms: AtomicU64::new(now),
            contact_ms: AtomicU64::new(0),
            index: AtomicU64::new(0),
            readers: AtomicUsize::new(0),
            empty: AtomicBool::new(true),
            leader_known: AtomicBool::new(true),
            ready: tokio::sync::Notify::new(),
        });
        held.insert(name.clone(), h.clone());
        drop(held);
        self.inner
            .runtime
            .spawn(follow(self.inner.clone(), name, h));
        Want::Starting
    }

    /// [`Views::want`], then waits up to `wait` for the view's first snapshot; whether it has
    /// one (false at once when [`Want::Full`]).
    pub async fn ready(&self, name: &str, wait: Duration) -> bool {
        match self.want(name) {
            Want::Ready => return true,
            Want::Full => return false,
            Want::Starting => {}
        }
        let Some(h) = lock(&self.inner.held).get(&key(name)).cloned() else {
            return false;
        };
        let deadline = Instant::now() + wait;
        loop {
            let woken = h.ready.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if h.index.load(Ordering::Acquire) > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return false;
            }
        }
    }

    /// The index of `name`'s view (0: none, or no snapshot yet).
    pub fn index(&self, name: &str) -> Index {
        lock(&self.inner.held)
            .get(&key(name))
            .map_or(0, |h| h.index.load(Ordering::Acquire))
    }

    /// Marks `name`'s view read until the guard drops (then used), so it is not dropped as
    /// idle under a query, a blocking one included. `None` when the name has no view.
    pub fn reading(&self, name: &str) -> Option<Reading> {
        let held = lock(&self.inner.held).get(&key(name))?.clone();
        held.readers.fetch_add(1, Ordering::AcqRel);
        Some(Reading {
            inner: self.inner.clone(),
            held,
        })
    }

    /// Whether `name`'s server knew a leader at its last heartbeat (true until one says not).
    pub fn leader_known(&self, name: &str) -> bool {
        lock(&self.inner.held)
            .get(&key(name))
            .is_some_and(|h| h.leader_known.load(Ordering::Relaxed))
    }

    /// How long ago `name`'s view last heard from a server; `None` without a snapshot.
    pub fn contact(&self, name: &str) -> Option<Duration> {
        let at = lock(&self.inner.held)
            .get(&key(name))
            .map(|h| h.contact_ms.load(Ordering::Relaxed))
            .filter(|at| *at > 0)?;
        Some(Duration::from_millis(
            self.inner.now_ms().saturating_sub(at),
        ))
    }

    /// How often a use must be recorded at least so a view in use is never dropped as idle:
    /// a quarter of the idle time, at most 1 s.
    pub fn touch_every(&self) -> Duration {
        (self.inner.idle / 4).min(Duration::from_secs(1))
    }

    /// How many names have a view.
    pub fn held(&self) -> usize {
        lock(&self.inner.held).len()
    }

    /// How many times a view moved to another server (or re-subscribed) since start.
    pub fn resubscriptions(&self) -> u64 {
        self.inner.resubscriptions.load(Ordering::Relaxed)
    }

    /// How long ago the least recently heard-from view heard from a server: how stale the
    /// answers may be. `None` with no view that has a snapshot.
    pub fn oldest_contact(&self) -> Option<Duration> {
        let now = self.inner.now_ms();
        lock(&self.inner.held)
            .values()
            .map(|h| h.contact_ms.load(Ordering::Relaxed))
            .filter(|at| *at > 0)
            .min()
            .map(|at| Duration::from_millis(now.saturating_sub(at)))
    }
}

/// A query reading a view ([`Views::reading`]).
pub struct Reading {
    inner: Arc<Inner>,
    held: Arc<Held>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.held
            .used_ms
            .store(self.inner.now_ms(), Ordering::Relaxed);
        self.held.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        // Never 0, which means "never" in `Held`.
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Whether this loss of a server is the one to warn of ([`LOSS_WARN_EVERY`]).
    fn may_warn_of_loss(&self) -> bool {
        let now = self.now_ms();
        let last = self.loss_warned_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= LOSS_WARN_EVERY.as_millis() as u64)
            && self
                .loss_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn idle(&self, h: &Held) -> bool {
        let unused = self
            .now_ms()
            .saturating_sub(h.used_ms.load(Ordering::Relaxed));
        let idle = if h.empty.load(Ordering::Relaxed) {
            self.idle.min(EMPTY_IDLE)
        } else {
            self.idle
        };
        unused >= idle.as_millis() as u64 && h.readers.load(Ordering::Acquire) == 0
    }

    /// Applies `snapshot` of `held`'s name, from a subscription made in `epoch`: the epoch
    /// the follower is in now and whether the snapshot was newer than the view, or `None` when
    /// the views were restarted since that subscription began (the follower starts again).
    /// A snapshot of another cluster than the views' restarts them: every view emptied, its
    /// index 0, the epoch moved on, so every other follower subscribes afresh.
    fn apply(&self, held: &Held, snapshot: ServiceSnapshot, epoch: u64) -> Option<(u64, bool)> {
        let another = {
            let ours = lock(&self.cluster_id);
            !ours.is_empty() && !snapshot.cluster_id.is_empty() && *ours != snapshot.cluster_id
        };
        // `held` before `publishing`, as in `drop_if_idle`.
        let views = another.then(|| lock(&self.held));
        let _one = lock(&self.publishing);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        let index = snapshot.index;
        if !another && index <= held.index.load(Ordering::Acquire) {
            return Some((epoch, false));
        }
        {
            // Before the epoch moves: a follower that sees the new epoch sees this cluster.
            let mut ours = lock(&self.cluster_id);
            if ours.is_empty() || another {
                ours.clone_from(&snapshot.cluster_id);
            }
        }
        let (mut state, epoch) = match &views {
            Some(views) => {
                tracing::warn!(service = %snapshot.name, cluster = %snapshot.cluster_id, views = views.len(), "the servers are another cluster than this agent's views came from (their data was lost or replaced): every view starts afresh");
                for h in views.values() {
                    h.index.store(0, Ordering::Release);
                }
                let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                (crate::catalog::State::default(), epoch)
            }
            None => ((*self.catalog.load()).clone(), epoch),
        };
        if state.cluster_id() != snapshot.cluster_id && !snapshot.cluster_id.is_empty() {
            // So DNS's pre-encoded answers from the old cluster go (`dns::cache`).
            state.set_cluster_id(&snapshot.cluster_id);
        }
        let changes = state.replace_service(snapshot);
        if another {
            self.catalog
                .publish_changes(state, &[crate::catalog::Change::Everything]);
        } else {
            self.catalog.publish_changes(state, &changes);
        }
        held.index.store(index, Ordering::Release);
        Some((epoch, true))
    }

    /// Drops `name`'s view if it is still idle. Decided under the map's lock, which `want` and
    /// `reading` take: a use since the caller's look keeps the view, and a new view of the name
    /// cannot start in between and lose its first snapshot to this removal.
    fn drop_if_idle(&self, name: &str, held: &Held) -> bool {
        let mut views = lock(&self.held);
        if !self.idle(held) {
            return false;
        }
        views.remove(name);
        self.forget(name);
        tracing::debug!(service = %name, "dropped an idle view");
        true
    }

    fn forget(&self, name: &str) {
        let _one = lock(&self.publishing);
        let mut state = (*self.catalog.load()).clone();
        let changes = state.drop_service(name);
        self.catalog.publish_changes(state, &changes);
    }
}

/// Why one subscription ended.
enum Ended {
    Idle,
    Stopped,
    /// The views started afresh (another cluster): subscribe again at once.
    Restarted,
    /// Move on (to the next server after this one); whether this subscription brought
    /// anything.
    Resubscribe {
        why: String,
        heard: bool,
    },
}

/// Follows one name until it goes idle or the agent stops.
async fn follow(inner: Arc<Inner>, name: CompactString, held: Arc<Held>) {
    const FIRST_PAUSE: Duration = Duration::from_millis(50);
    let mut pause = FIRST_PAUSE;
    loop {
        match subscribe_once(&inner, &name, &held).await {
            Ended::Stopped => return,
            Ended::Idle if inner.drop_if_idle(&name, &held) => return,
            Ended::Idle => continue,
            Ended::Restarted => {
                pause = FIRST_PAUSE;
                continue;
            }
            Ended::Resubscribe { why, heard } => {
                inner.resubscriptions.fetch_add(1, Ordering::Relaxed);
                // Until a server that knows a leader is heard again.
                held.leader_known.store(false, Ordering::Relaxed);
                if heard {
                    pause = FIRST_PAUSE;
                    let index = held.index.load(Ordering::Relaxed);
                    if inner.may_warn_of_loss() {
                        let views = lock(&inner.held).len();
                        tracing::warn!(service = %name, reason = %why, index, views, "a view lost its server; resubscribing (answers come from the views meanwhile; further losses within 10 s are logged at debug)");
                    } else {
                        tracing::debug!(service = %name, reason = %why, index, "view lost its server; resubscribing");
                    }
                } else {
                    tracing::debug!(service = %name, reason = %why, "resubscribing");
                }
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
        // With no server to subscribe to, a view still goes once unused.
        if inner.idle(&held) && inner.drop_if_idle(&name, &held) {
            return;
        }
    }
}

/// One subscription on the next server, applied until it ends.
async fn subscribe_once(inner: &Inner, name: &str, held: &Held) -> Ended {
    let resubscribe = |why: String, heard: bool| Ended::Resubscribe { why, heard };
    let Some(server) = inner.servers.candidates().into_iter().next() else {
        return resubscribe("no server is alive in the gossip pool".into(), false);
    };
    let mut epoch = inner.epoch.load(Ordering::Acquire);
    let watch = ServiceWatch {
        service: name.to_string(),
        after: held.index.load(Ordering::Acquire),
        cluster_id: lock(&inner.cluster_id).clone(),
    };
    let body = match encode(&watch) {
        Ok(body) => body,
        Err(e) => return resubscribe(e, false),
    };
    let addr = server.to_string();
    let mut sub = match inner
        .servers
        .pool
        .subscribe(&addr, Method::ServiceStream as u16, body)
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            inner.servers.skip(server);
            return resubscribe(format!("{addr}: {e}"), false);
        }
    };
    let mut heard = false;
    let mut last_heard = Instant::now();
    // Checked at least this often, so an unused view goes even while its name is quiet.
    let idle_check = inner
        .idle
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            _ = inner.stop.cancelled() => return Ended::Stopped,
            next = tokio::time::timeout(SILENT_FOR.min(idle_check), sub.next()) => next,
        };
        if inner.idle(held) {
            return Ended::Idle;
        }
        if inner.epoch.load(Ordering::Acquire) != epoch {
            return Ended::Restarted;
        }
        let bytes = match next {
            Err(_) if last_heard.elapsed() < SILENT_FOR => continue,
            Err(_) => {
                // A paused server's connection stays open: the next call must not reuse it.
                inner.servers.pool.forget(&addr);
                inner.servers.skip(server);
                return resubscribe(format!("{addr}: silent for {SILENT_FOR:?}"), heard);
            }
            Ok(None) => {
                inner.servers.skip(server);
                return resubscribe(format!("{addr}: the stream ended"), heard);
            }
            Ok(Some(Err(e))) => {
                inner.servers.skip(server);
                return resubscribe(format!("{addr}: {e}"), heard);
            }
            Ok(Some(Ok(bytes))) => bytes,
        };
        heard = true;
        last_heard = Instant::now();
        match decode::<ServiceEvent>(&bytes) {
            Ok(ServiceEvent::Heartbeat { known_leader }) => {
                held.leader_known.store(known_leader, Ordering::Relaxed);
                if !known_leader {
                    inner.servers.skip(server);
                    return resubscribe(format!("{addr}: knows no leader"), heard);
                }
                held.contact_ms.store(inner.now_ms(), Ordering::Relaxed);
            }
            Ok(ServiceEvent::Snapshot(snapshot)) => {
                // The server sends only what is above `after` (or, from another cluster,
                // anything); `apply` guards the view anyway.
                held.leader_known.store(true, Ordering::Relaxed);
                held.contact_ms.store(inner.now_ms(), Ordering::Relaxed);
                let empty = snapshot.instances.is_empty();
                match inner.apply(held, snapshot, epoch) {
                    None => return Ended::Restarted,
                    Some((now_in, applied)) => {
                        epoch = now_in;
                        if applied {
                            held.empty.store(empty, Ordering::Relaxed);
                            held.ready.notify_waiters();
                        }
                    }
                }
            }
            Err(e) => return resubscribe(format!("{addr}: {e}"), heard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views with no server to follow: every one stays without a snapshot.
    fn serverless(idle: Duration) -> Views {
        let servers = Servers::new(Arc::new(Vec::new), None);
        Views::new(
            servers,
            View::new(Default::default()),
            idle,
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn past_max_views_a_new_name_gets_none_and_held_ones_stay() {
        let views = serverless(Duration::from_secs(600));
        for i in 0..MAX_VIEWS {
            assert_eq!(views.want(&format!("svc{i}")), Want::Starting);
        }
        assert_eq!(views.want("one-more"), Want::Full);
        assert!(!views.ready("one-more", Duration::from_millis(1)).await);
        assert_eq!(views.want("SVC7"), Want::Starting, "held names, any case");
        assert_eq!(views.held(), MAX_VIEWS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_without_instances_goes_after_empty_idle() {
        let views = serverless(Duration::from_secs(600));
        views.want("typo");
        assert_eq!(views.held(), 1);
        tokio::time::sleep(EMPTY_IDLE + Duration::from_secs(3)).await;
        assert_eq!(views.held(), 0, "long before the 600 s idle time");
    }
}
