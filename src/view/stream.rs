//! The event stream's server side: a subscriber follows one service name and receives its
//! snapshot (`catalog::ServiceSnapshot`) each time the name's index passes the last one sent.
//!
//! Every server serves it from its own applied state, so none needs the leader and client
//! agents spread over the servers (each client's views use the server it prefers). A
//! subscriber resumes elsewhere by naming the last index it has: a server behind that index
//! says nothing until it has caught up, so a view never goes back. A snapshot restore moves
//! every service index (`State::restore`), which sends every name again. A subscriber whose
//! index is from another cluster (the servers lost their data and formed a new one) is sent
//! the name at once (`raft::rpc`), and the client starts its views afresh.
//!
//! Backpressure coalesces: a snapshot is taken only once the stream's queue on the connection
//! has room, so a subscriber whose connection backs up receives the newest state, not a queue
//! of old ones (a client agent reads its streams into memory at once, so in practice every
//! change is sent). A heartbeat goes out whenever nothing else did for a while, so a subscriber
//! can tell a quiet name from a server that went silent (paused, or behind a partition) and
//! move to another; it says whether the server knows a leader (`raft::rpc::ServiceEvent`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::View;
use super::watch::Topic;
use crate::catalog::{ServiceSnapshot, key};
use crate::model::Index;

/// Sends `name`'s snapshots into `out`, encoded by `encode`, starting with the first whose
/// index is above `after`, and `encode(None)` after each `heartbeat` without a send; returns
/// when `out` closes or `encode` fails (its error).
pub async fn follow_service<T>(
    view: View,
    name: &str,
    mut after: Index,
    heartbeat: Duration,
    out: mpsc::Sender<T>,
    encode: impl Fn(Option<&ServiceSnapshot>) -> Result<T, String>,
) -> Result<(), String> {
    let name = key(name);
    let notify = view.watchers().subscribe(Topic::Service(name.to_string()));
    let mut quiet_until = Instant::now() + heartbeat;
    loop {
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if view.load().service_index(&name) > after {
            let Ok(permit) = out.reserve().await else {
                return Ok(());
            };
            let snapshot = view.load().service_snapshot(&name);
            after = snapshot.index;
            permit.send(encode(Some(&snapshot))?);
            quiet_until = Instant::now() + heartbeat;
            continue;
        }
        tokio::select! {
            _ = changed => {}
            _ = out.closed() => return Ok(()),
            _ = tokio::time::sleep_until(quiet_until) => {
                // A full queue already tells the subscriber the server is alive.
                if let Ok(permit) = out.try_reserve() {
                    permit.send(encode(None)?);
                }
                quiet_until = Instant::now() + heartbeat;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Command, Registration, State};
    use crate::model::{NodeSpec, ServiceSpec};

    fn register(state: &mut State, index: Index, node: &str) -> Vec<crate::catalog::Change> {
        let mut changes = Vec::new();
        let reg = Registration {
            node: NodeSpec {
                name: node.into(),
                address: "10.0.0.1".into(),
                ..Default::default()
            },
            service: Some(ServiceSpec {
                id: "web".into(),
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        state
            .apply(index, 0, &Command::Register(Box::new(reg)), &mut changes)
            .unwrap();
        changes
    }

    const BEAT: Duration = Duration::from_secs(5);

    fn snap(s: Option<&ServiceSnapshot>) -> Result<Option<ServiceSnapshot>, String> {
        Ok(s.cloned())
    }

    /// The first snapshot, then one per change in index order; a subscriber that resumes
    /// at an index the server has not reached hears nothing until it has.
    #[tokio::test(start_paused = true)]
    async fn snapshots_follow_the_name_and_never_go_back() {
        let mut state = State::new();
        register(&mut state, 3, "n1");
        let view = View::new(state.clone());
        let (tx, mut rx) = mpsc::channel(1);
        let follow = tokio::spawn(follow_service(view.clone(), "WEB", 0, BEAT, tx, snap));
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((first.index, first.instances.len()), (3, 1));
        let changes = register(&mut state, 7, "n2");
        view.publish_changes(state.clone(), &changes);
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!((second.index, second.instances.len()), (7, 2));
        drop(rx);
        follow.await.unwrap().unwrap();

        let (tx, mut rx) = mpsc::channel(1);
        let resumed = tokio::spawn(follow_service(view.clone(), "web", 9, BEAT, tx, snap));
        // Paused time: the clock moves only while the follower is idle, so by the heartbeat
        // it has looked at index 7 and sent nothing.
        assert_eq!(
            rx.recv().await.unwrap(),
            None,
            "index 7 is behind the resumed 9"
        );
        let changes = register(&mut state, 10, "n3");
        view.publish_changes(state.clone(), &changes);
        assert_eq!(rx.recv().await.unwrap().unwrap().index, 10);
        drop(rx);
        resumed.await.unwrap().unwrap();
    }
}
