//! The store: openraft's storage conformance suite against the redb log and the state
//! machine, and what happens when the disk stops taking writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use beacon::catalog::Command;
use beacon::cluster::WriteError;
use beacon::config::Timing;
use beacon::raft::RaftNode;
use beacon::store::types::{ServerNode, StorageError, TypeConfig};
use beacon::store::{self, LogStore, StateMachineStore};
use beacon::tasks::Tasks;
use beacon::view::View;
use openraft::testing::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(dir.path()).unwrap();
        let sm = StateMachineStore::load(db.clone(), View::default()).unwrap();
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn redb_store_passes_the_openraft_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}

/// A file backend whose writes and syncs fail once `fail` is set: a disk that stops accepting
/// writes (full, or gone read-only) under a running server.
#[derive(Debug)]
struct FailingBackend {
    file: redb::backends::FileBackend,
    fail: Arc<AtomicBool>,
}

impl FailingBackend {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FailingBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
}

/// redb's own file backend on `path` (created if absent), for a test backend to wrap.
fn file_backend(path: &std::path::Path) -> redb::backends::FileBackend {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    redb::backends::FileBackend::new(file).unwrap()
}

/// The store's database on a test backend.
fn open_on(backend: impl redb::StorageBackend, path: &std::path::Path) -> Arc<redb::Database> {
    let db = redb::Builder::new().create_with_backend(backend).unwrap();
    store::adopt(db, path).unwrap()
}

fn key_write(i: usize) -> Command {
    Command::KvSet {
        key: format!("k/{i}"),
        value: format!("v{i}").into_bytes(),
        flags: 0,
        cas: None,
    }
}

/// A one-server Raft node on `db`, elected and ready.
async fn single_server(db: Arc<redb::Database>, view: View, tasks: &Tasks) -> RaftNode {
    let id = store::node_id(&db).unwrap();
    let me = ServerNode {
        rpc_addr: "127.0.0.1:1".into(),
        name: "solo".into(),
    };
    let node = RaftNode::start(id, me, db, view, &Timing::default(), None, tasks)
        .await
        .unwrap();
    node.bootstrap_single().await.unwrap();
    assert!(node.wait_for_leader(Duration::from_secs(10)).await);
    node
}

/// A snapshot that cannot be written stops Raft (the server then exits non-zero: the
/// `raft-core` task is essential) instead of purging the log it covers; the restart, from the
/// previous snapshot and the log, has every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_written_stops_raft_and_the_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(store::DB_FILE);
    let fail = Arc::new(AtomicBool::new(false));
    {
        let backend = FailingBackend {
            file: file_backend(&path),
            fail: fail.clone(),
        };
        let db = open_on(backend, &path);
        let tasks = Tasks::new();
        let node = single_server(db, View::default(), &tasks).await;
        let writer = node.writer();
        for i in 0..20 {
            writer.write(key_write(i)).await.unwrap().unwrap();
        }
        // A snapshot that is saved, then more log after it.
        node.raft().trigger().snapshot().await.unwrap();
        node.raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some(), "first snapshot")
            .await
            .unwrap();
        for i in 20..40 {
            writer.write(key_write(i)).await.unwrap().unwrap();
        }
        fail.store(true, Ordering::SeqCst);
        node.raft().trigger().snapshot().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), node.wait_stopped())
            .await
            .expect("raft stops when its snapshot cannot be written");
        tasks.stop().cancel();
        tasks.drain(Duration::from_secs(5)).await;
    }
    let db = store::open(dir.path()).expect("the data dir opens after the failure");
    let view = View::default();
    let tasks = Tasks::new();
    let node = single_server(db, view.clone(), &tasks).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = view.load();
        let missing: Vec<usize> = (0..40)
            .filter(|i| state.kv_get(&format!("k/{i}")).is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged writes lost after the restart: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
    tasks.stop().cancel();
}

/// A file backend whose fsyncs wait while `held` is set: a disk that stalls.
#[derive(Debug)]
struct StallingBackend {
    file: redb::backends::FileBackend,
    held: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

/// Lets a `StallingBackend`'s fsyncs through when dropped.
struct Release(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Drop for Release {
    fn drop(&mut self) {
        let (lock, released) = &*self.0;
        if let Ok(mut held) = lock.lock() {
            *held = false;
        }
        released.notify_all();
    }
}

impl redb::StorageBackend for StallingBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let (lock, released) = &*self.held;
        let mut held = lock.lock().expect("stall lock");
        while *held {
            held = released.wait(held).expect("stall lock");
        }
        drop(held);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)
    }
}

/// While the leader cannot commit (its disk stalls), writes queue up to the bound and the next
/// one is refused at once with `Busy` (HTTP 429) and counted; the queued ones all commit once
/// the disk moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_refuses_at_once_and_loses_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(store::DB_FILE);
    let held = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let backend = StallingBackend {
        file: file_backend(&path),
        held: held.clone(),
    };
    let db = open_on(backend, &path);
    let tasks = Tasks::new();
    let view = View::default();
    let node = single_server(db, view.clone(), &tasks).await;
    let rejected_before = beacon::metrics::WRITES.rejected_busy.load(Ordering::SeqCst);

    *held.0.lock().unwrap() = true;
    // Released on every way out, a failed assertion too: a stalled fsync would otherwise keep
    // the runtime from shutting down and hang the test instead of failing it.
    let release = Release(held.clone());
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    let mut sent = 0;
    let refused = 'fill: loop {
        assert!(sent < 50_000, "no write was refused after {sent} queued");
        for _ in 0..100 {
            let (node, done) = (node.clone(), done.clone());
            let request = beacon::catalog::Request {
                at_ms: 0,
                command: key_write(sent),
            };
            tokio::spawn(async move {
                let _ = done.send(node.write_local(request).await.map(|_| ()));
            });
            sent += 1;
        }
        tokio::task::yield_now().await;
        // While the disk stalls, the first answer to come back can only be a refusal.
        if let Ok(result) = results.try_recv() {
            match result {
                Err(WriteError::Busy) => break 'fill true,
                Err(e) => panic!("a queued write failed: {e}"),
                Ok(()) => panic!("a write committed while the disk was stalled"),
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(refused);
    assert!(beacon::metrics::WRITES.rejected_busy.load(Ordering::SeqCst) > rejected_before);

    drop(release);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut committed, mut busy) = (0, 1);
    while committed + busy < sent {
        let result = tokio::time::timeout_at(deadline, results.recv())
            .await
            .expect("every write answered once the disk moves")
            .unwrap();
        match result {
            Ok(()) => committed += 1,
            Err(WriteError::Busy) => busy += 1,
            Err(e) => panic!("a queued write failed: {e}"),
        }
    }
    assert!(committed > 0);
    node.shutdown().await;
    tasks.stop().cancel();
}
