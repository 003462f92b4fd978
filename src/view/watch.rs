//! Wake-ups for blocking queries: a waiter subscribes to the topics it reads, and an applied
//! batch notifies only the topics it changed (a table, one service name, or the KV prefixes that
//! cover a written key), never every waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::catalog::Change;

/// What a blocking query watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Nodes,
    Services,
    Checks,
    Kv,
    Sessions,
    /// The instances (and health) of one lower-cased service name.
    Service(String),
    /// Every key under a prefix.
    KvPrefix(String),
}

#[derive(Default)]
pub struct Watchers {
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
}

impl Watchers {
    /// The notifier for a topic; hold it (and enable a `notified()` future) before reading.
    pub fn subscribe(&self, topic: Topic) -> Arc<Notify> {
        self.topics
            .lock()
            .expect("watchers lock")
            .entry(topic)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Wakes the waiters of what `changes` touched.
    pub fn notify(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut topics = self.topics.lock().expect("watchers lock");
        // Forget topics nobody waits on any more.
        topics.retain(|_, n| Arc::strong_count(n) > 1);
        let everything = changes.contains(&Change::Everything);
        for (topic, notify) in topics.iter() {
            let hit = everything
                || changes.iter().any(|c| match (topic, c) {
                    (Topic::Nodes, Change::Node(_)) => true,
                    (Topic::Services, Change::Service(_)) => true,
                    (Topic::Checks, Change::Check(_)) => true,
                    (Topic::Kv, Change::Kv(_)) => true,
                    (Topic::Sessions, Change::Session(_)) => true,
                    (Topic::Service(name), Change::ServiceIndex(changed)) => name == changed,
                    (Topic::KvPrefix(prefix), Change::Kv(key)) => key.starts_with(prefix.as_str()),
                    _ => false,
                });
            if hit {
                notify.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_matching_topics_wake() {
        let w = Watchers::default();
        let web = w.subscribe(Topic::Service("web".into()));
        let db = w.subscribe(Topic::Service("db".into()));
        let app = w.subscribe(Topic::KvPrefix("app/".into()));
        let web_wait = web.notified();
        let db_wait = db.notified();
        let app_wait = app.notified();
        tokio::pin!(web_wait, db_wait, app_wait);
        web_wait.as_mut().enable();
        db_wait.as_mut().enable();
        app_wait.as_mut().enable();
        w.notify(&[
            Change::ServiceIndex("web".into()),
            Change::Kv("app/x".into()),
        ]);
        let ready = |f: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>| futures_ready(f);
        assert!(ready(web_wait.as_mut()));
        assert!(ready(app_wait.as_mut()));
        assert!(
            !ready(db_wait.as_mut()),
            "a write to web does not wake db's watchers"
        );
    }

    fn futures_ready(f: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        matches!(f.poll(&mut cx), Poll::Ready(()))
    }
}
