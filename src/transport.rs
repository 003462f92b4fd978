//! Server-to-server RPC transport: persistent, multiplexed connections carrying opaque bodies.
//!
//! This module owns the TCP connections between Beacon servers: the client-side [`Pool`] (one
//! lazily opened connection per peer address, shared by all callers), the server side
//! ([`serve`], [`serve_connection`] over any `AsyncRead + AsyncWrite` stream) and the wire
//! format. Callers encode their own messages; bodies are [`Bytes`].
//!
//! # TLS
//! With [`Tls`](crate::tls::Tls), a listener tells a TLS connection from a plaintext one by its
//! first byte (a TLS handshake record is 0x16; a plaintext frame's length starts with 0x00),
//! refuses plaintext when `verify_incoming` requires TLS, and admits a peer whose verified
//! certificate does not name a server as an [`Admission::Agent`]: the handler's
//! [`Handler::server_only`] methods are refused to it. A [`Pool`] connects over TLS when
//! `verify_outgoing` is on, and opens fresh connections after a certificate reload.
//!
//! # Wire format
//! Every frame is a 4-byte big-endian length, then that many bytes of MessagePack
//! (`rmp_serde::to_vec`): a one-entry map from the variant name to an array of its fields in the
//! order below (so names and field order are the wire format); bodies are msgpack `bin`. A frame
//! longer than [`Limits::max_frame`] is a protocol error.
//! - `Hello { magic, version, cluster }` client → server, first frame; `magic` is "BEACONRP" as a
//!   big-endian u64. Its shape is frozen so that any future version can still be refused politely.
//! - `Welcome { version, cluster }` or `Refused { reason }` server → client; the server closes
//!   after `Refused`.
//! - `Call { id, method, body }` → `Reply { id, body }` or `Fail { id, reason }` (handler error).
//! - `Subscribe { id, method, body }` → zero or more `Push { id, body }`, then `End { id, reason }`
//!   (`reason` set when the handler refused or failed the stream). `Cancel { id }` from the client
//!   stops a stream; it is ignored for a finished one.
//!
//! Ids are chosen by the client and never reused on a connection; replies come in completion order.
//!
//! # Handshake
//! The server accepts exactly [`VERSION`]. A wrong magic, another version, or a first frame that
//! is not `Hello` is answered with `Refused` (naming both versions where relevant). If both sides
//! report a non-empty cluster ID and they differ, the server refuses with "this server belongs to
//! cluster X, the caller to Y"; an empty ID (a server not yet in a cluster) is accepted.
//!
//! # Errors
//! A malformed, oversized or unexpected frame closes that one connection (logged with the peer);
//! the listener and other connections carry on. A closed connection fails all its pending calls and
//! streams at once. [`CallError`] tells the caller what it may assume: `Unreachable` = nothing was
//! sent (retry freely), `Lost` = the request may have run, `Remote` = the handler said no.
//!
//! # Why hand-written
//! This is thin glue over tokio-util's `LengthDelimitedCodec` plus msgpack: no maintained crate
//! multiplexes RPC and server-push streams over our own frames without protobuf/protoc. tarpc was
//! considered: it imposes its own request envelope, has no server-push streams or handshake hook.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use futures_util::{SinkExt, Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::tls::Tls;

/// Protocol version; the server accepts exactly this one. 2: log entries and snapshots travel
/// zstd-compressed, which a version-1 server cannot read.
pub const VERSION: u32 = 2;
/// "BEACONRP" in ASCII, big-endian: tells a Beacon peer from a stray client at the first frame.
pub const MAGIC: u64 = u64::from_be_bytes(*b"BEACONRP");
/// Frames a server connection may have queued for its writer before call/stream tasks wait.
const WRITE_QUEUE: usize = 1024;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// This server's cluster ID, read at each handshake (it changes when the server joins a cluster).
/// An empty string means "not in a cluster yet" and matches any peer.
pub type ClusterId = Arc<dyn Fn() -> String + Send + Sync>;

/// Per-connection limits, applied on both sides.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame payload in bytes (default 64 MiB); larger frames close the connection.
    pub max_frame: usize,
    /// Calls a server runs at once per connection (default 1024); beyond it the server stops reading.
    pub max_in_flight: usize,
    /// Bound on TCP connect + handshake (default 2 s); also how long a server waits for `Hello`.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 << 20,
            max_in_flight: 1024,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Serves requests arriving on server connections.
pub trait Handler: Send + Sync + 'static {
    /// Whether only a peer that proved to be a server may call `method` (see
    /// [`Admission::Agent`]). None by default.
    fn server_only(&self, _method: u16) -> bool {
        false
    }
    /// One request; Err(reason) becomes a Fail frame.
    fn call(&self, method: u16, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
    /// A server-pushed stream: items until the receiver ends; Err(reason) refuses it (End with reason).
    fn subscribe(
        &self,
        method: u16,
        body: Bytes,
    ) -> BoxFuture<'static, Result<mpsc::Receiver<Bytes>, String>>;
}

/// Why a client call or subscription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent: connect failed or timed out, or the handshake was refused. Safe to retry.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request may have been delivered, then the connection broke or the timeout passed.
    #[error("outcome unknown: {0}")]
    Lost(String),
    /// The remote handler answered with this error.
    #[error("remote error: {0}")]
    Remote(String),
    /// The request does not fit in [`Limits::max_frame`]; nothing was sent, and retrying won't help.
    #[error("too large: {0}")]
    TooLarge(String),
}

impl CallError {
    /// True when nothing was sent, so the request can go to this or another server again.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable(_))
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket error, including an oversized frame (the codec reports it as `InvalidData`).
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    /// We refused the peer at the handshake, for this reason.
    #[error("refused: {0}")]
    Refused(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// One frame on the wire. Bodies borrow from the received buffer so they reach the caller without
/// a copy (see `Bytes::slice_ref` at the decode sites).
#[rustfmt::skip] // kept as a one-line-per-frame table: this is the wire format
#[derive(Debug, Serialize, Deserialize)]
enum Frame<'a> {
    Hello { magic: u64, version: u32, cluster: String },
    Welcome { version: u32, cluster: String },
    Refused { reason: String },
    Call { id: u64, method: u16, #[serde(with = "serde_bytes")] body: &'a [u8] },
    Reply { id: u64, #[serde(with = "serde_bytes")] body: &'a [u8] },
    Fail { id: u64, reason: String },
    Subscribe { id: u64, method: u16, #[serde(with = "serde_bytes")] body: &'a [u8] },
    Push { id: u64, #[serde(with = "serde_bytes")] body: &'a [u8] },
    End { id: u64, reason: Option<String> },
    Cancel { id: u64 },
}

impl Frame<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::Call { .. } => "Call",
            Frame::Reply { .. } => "Reply",
            Frame::Fail { .. } => "Fail",
            Frame::Subscribe { .. } => "Subscribe",
            Frame::Push { .. } => "Push",
            Frame::End { .. } => "End",
            Frame::Cancel { .. } => "Cancel",
        }
    }
}

/// Encodes a frame, refusing it here if the peer's codec would reject it: failing one message is
/// better than the writer erroring and taking the whole connection down.
fn encode(frame: &Frame<'_>, max: usize) -> Result<Bytes, String> {
    let buf = rmp_serde::to_vec(frame).map_err(|e| format!("cannot encode: {e}"))?;
    if buf.len() > max {
        return Err(format!(
            "{} frame of {} bytes exceeds the {max}-byte limit",
            frame.kind(),
            buf.len()
        ));
    }
    Ok(buf.into())
}

fn decode(raw: &[u8]) -> Result<Frame<'_>, ConnectionError> {
    crate::model::msgpack::from_slice(raw).map_err(|e| ConnectionError::Malformed(e.to_string()))
}

/// The calls and subscriptions (method, body) a connection would read from `bytes`: frames cut
/// by the length-delimited codec with the default limits and decoded, up to the first error, as
/// a connection stops there. The server-RPC fuzz target's way in (`crate::fuzz`).
pub(crate) fn calls_in(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    use tokio_util::codec::Decoder;
    let mut codec = codec(&Limits::default());
    let mut buf = bytes::BytesMut::from(bytes);
    let mut calls = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        match decode(&frame) {
            Ok(Frame::Call { method, body, .. } | Frame::Subscribe { method, body, .. }) => {
                calls.push((method, body.to_vec()))
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    calls
}

fn codec(limits: &Limits) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(limits.max_frame)
        .new_codec()
}

/// A poisoned lock only means another task panicked mid-update of a plain map; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The single writer of a connection. Everything already queued is fed before one flush, so
/// under load many frames share a syscall instead of paying one each.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut sink: FramedWrite<W, LengthDelimitedCodec>,
    mut queue: impl Stream<Item = Bytes> + Unpin,
) -> io::Result<()> {
    while let Some(frame) = queue.next().await {
        sink.feed(frame).await?;
        while let Some(Some(frame)) = queue.next().now_or_never() {
            sink.feed(frame).await?;
        }
        SinkExt::<Bytes>::flush(&mut sink).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server

/// What an accepted connection may do, decided by TLS before the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Any method: a server, or no policy in force.
    Server,
    /// Not the methods the handler marks [`Handler::server_only`]: a verified client agent
    /// whose certificate does not name a server.
    Agent,
    /// Refused at `Hello` with this reason (e.g. plaintext where TLS is required).
    Refuse(String),
}

/// The first byte of a TLS record carrying a handshake (RFC 8446 §5.1); a plaintext client's
/// first frame starts with its length's high byte, which is 0 for any frame this small.
const TLS_HANDSHAKE: u8 = 0x16;

/// Connections a listener lets sit between accept and the end of their TLS handshake; more are
/// closed at once, so a flood of half-open handshakes costs bounded CPU and memory.
pub const MAX_HANDSHAKES: usize = 256;

/// How often one peer address may log the same kind of refusal: a misconfigured agent retries
/// many times a second, and the first line says all there is to say.
const QUIET_FOR: Duration = Duration::from_secs(30);

/// Remembers when each peer IP last logged a refusal.
#[derive(Default)]
struct Quiet(Mutex<HashMap<(std::net::IpAddr, &'static str), std::time::Instant>>);

impl Quiet {
    fn should_log(&self, peer: SocketAddr, kind: &'static str) -> bool {
        let mut seen = lock(&self.0);
        let now = std::time::Instant::now();
        if seen.len() > 4096 {
            seen.clear();
        }
        match seen.get(&(peer.ip(), kind)) {
            Some(at) if now.duration_since(*at) < QUIET_FOR => false,
            _ => {
                seen.insert((peer.ip(), kind), now);
                true
            }
        }
    }
}

/// Why a call from a verified client agent's certificate to a server-only method fails.
const SERVERS_ONLY: &str =
    "refused: only servers may call this (the client certificate does not name a server)";

/// Accepts connections until `stop` is cancelled, serving each on its own task. Cancelling `stop`
/// also closes every connection accepted here. With `tls`, a connection that opens with a TLS
/// handshake is served over TLS (the peer's certificate decides its [`Admission`]); a plaintext
/// one is refused when `verify_incoming` requires TLS.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    cluster: ClusterId,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let quiet = Arc::new(Quiet::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%peer, "too many RPC connections in their handshake; closing this one");
                    continue;
                };
                // Small frames (votes, heartbeats) must not sit in Nagle's buffer.
                if let Err(e) = tcp.set_nodelay(true) {
                    debug!(%peer, error = %e, "set_nodelay failed");
                }
                let (handler, cluster, limits, tls, stop, quiet) = (
                    handler.clone(),
                    cluster.clone(),
                    limits.clone(),
                    tls.clone(),
                    stop.clone(),
                    quiet.clone(),
                );
                tokio::spawn(async move {
                    let Some(tls) = tls else {
                        drop(permit);
                        let admit = Admission::Server;
                        return serve_connection(tcp, peer, handler, cluster, limits, admit, stop)
                            .await;
                    };
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(limits.connect_timeout, tcp.peek(&mut first)).await;
                    if !matches!(peeked, Ok(Ok(1))) {
                        return Ok(());
                    }
                    if first[0] != TLS_HANDSHAKE {
                        drop(permit);
                        let admit = if tls.rpc_requires_tls() {
                            if quiet.should_log(peer, "plaintext") {
                                warn!(%peer, "refusing a plaintext RPC connection: verify_incoming requires TLS (logged once per 30 s per address)");
                            }
                            Admission::Refuse(
                                "this server requires TLS with a client certificate (verify_incoming)"
                                    .into(),
                            )
                        } else {
                            Admission::Server
                        };
                        return serve_connection(tcp, peer, handler, cluster, limits, admit, stop)
                            .await;
                    }
                    let Some(config) = tls.rpc_server() else {
                        warn!(%peer, "TLS connection on the RPC port, but no certificate is configured; closing it");
                        return Ok(());
                    };
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                    let stream = match tokio::time::timeout(limits.connect_timeout, accept).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            if quiet.should_log(peer, "handshake") {
                                warn!(%peer, error = %e, "RPC TLS handshake failed; closing the connection (logged once per 30 s per address)");
                            }
                            return Ok(());
                        }
                        Err(_) => {
                            warn!(%peer, "RPC TLS handshake timed out; closing the connection");
                            return Ok(());
                        }
                    };
                    drop(permit);
                    let admit = if tls.peer_is_server(stream.get_ref().1.peer_certificates()) {
                        Admission::Server
                    } else {
                        Admission::Agent
                    };
                    serve_connection(stream, peer, handler, cluster, limits, admit, stop).await
                });
            }
            Err(e) => {
                // Typically out of file descriptors: pause rather than spin on the error.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one accepted connection (plain TCP or TLS) until the peer closes it, it breaks,
/// or `stop` is cancelled. Errors are logged with `peer` before being returned.
pub async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    handler: Arc<dyn Handler>,
    cluster: ClusterId,
    limits: Limits,
    admit: Admission,
    stop: CancellationToken,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refuse_logged = matches!(admit, Admission::Refuse(_));
    let result = async {
        let (r, w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, codec(&limits));
        let mut writer = FramedWrite::new(w, codec(&limits));
        let refuse = match &admit {
            Admission::Refuse(reason) => Some(reason.as_str()),
            _ => None,
        };
        let agent_only = admit == Admission::Agent;
        if !accept_hello(&mut reader, &mut writer, &cluster, &limits, refuse).await? {
            return Ok(());
        }
        let conn = stop.child_token();
        // However this connection ends, its call and stream tasks end with it.
        let _guard = conn.clone().drop_guard();
        let (out, mut queue) = mpsc::channel(WRITE_QUEUE);
        tokio::select! {
            r = read_requests(&mut reader, &handler, &out, &conn, &limits, agent_only.then_some(peer)) => r,
            r = write_loop(writer, stream::poll_fn(|cx| queue.poll_recv(cx))) => Ok(r?),
            _ = conn.cancelled() => Ok(()),
        }
    };
    let result = result.await;
    match &result {
        // The policy refusal was logged where it was decided.
        Err(ConnectionError::Refused(_)) if refuse_logged => {}
        // A peer that goes away without TLS's close_notify (a restarting server) is no error.
        Err(ConnectionError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            debug!(%peer, error = %e, "RPC connection closed by the peer");
        }
        Err(e) => warn!(%peer, error = %e, "closing RPC connection"),
        Ok(()) => {}
    }
    result
}

/// Reads and checks `Hello`, answering `Welcome` or `Refused`. Ok(false): the peer left first.
async fn accept_hello<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    cluster: &ClusterId,
    limits: &Limits,
    refuse: Option<&str>,
) -> Result<bool, ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Bounded so a peer that connects and says nothing cannot hold a task forever.
    let first = match tokio::time::timeout(limits.connect_timeout, reader.next()).await {
        Err(_) => {
            let waited = limits.connect_timeout;
            return Err(ConnectionError::Handshake(format!(
                "no Hello within {waited:?}"
            )));
        }
        Ok(None) => return Ok(false), // e.g. a TCP health check
        Ok(Some(raw)) => raw?.freeze(),
    };
    let ours = cluster();
    let refusal = match decode(&first) {
        _ if refuse.is_some() => refuse.map(str::to_owned),
        Ok(Frame::Hello { magic, .. }) if magic != MAGIC => Some(format!(
            "bad magic {magic:#018x}, expected {MAGIC:#018x}: not a Beacon RPC client"
        )),
        Ok(Frame::Hello { version, .. }) if version != VERSION => Some(format!(
            "the caller speaks protocol version {version}, this server only version {VERSION}"
        )),
        Ok(Frame::Hello {
            cluster: theirs, ..
        }) => (!ours.is_empty() && !theirs.is_empty() && ours != theirs)
            .then(|| format!("this server belongs to cluster {ours}, the caller to {theirs}")),
        Ok(other) => Some(format!(
            "expected Hello as the first frame, got {}",
            other.kind()
        )),
        Err(e) => Some(format!("expected Hello as the first frame: {e}")),
    };
    if let Some(reason) = refusal {
        if let Ok(frame) = encode(
            &Frame::Refused {
                reason: reason.clone(),
            },
            limits.max_frame,
        ) {
            // Best effort: the peer is being dropped either way.
            let _ = writer.send(frame).await;
        }
        return Err(ConnectionError::Refused(reason));
    }
    let welcome = encode(
        &Frame::Welcome {
            version: VERSION,
            cluster: ours,
        },
        limits.max_frame,
    )
    .map_err(ConnectionError::Handshake)?;
    writer.send(welcome).await?;
    Ok(true)
}

async fn read_requests<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    handler: &Arc<dyn Handler>,
    out: &mpsc::Sender<Bytes>,
    conn: &CancellationToken,
    limits: &Limits,
    agent_only: Option<SocketAddr>,
) -> Result<(), ConnectionError> {
    let mut refused_logged = false;
    let mut refuse = |method: u16| {
        if !refused_logged {
            refused_logged = true;
            if let Some(peer) = agent_only {
                warn!(%peer, method, "refusing server-to-server calls from a certificate that does not name a server (verify_server_hostname)");
            }
        }
    };
    let permits = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let streams: Arc<Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
    let max = limits.max_frame;
    while let Some(raw) = reader.next().await {
        let raw = raw?.freeze();
        match decode(&raw)? {
            Frame::Call { id, method, body } => {
                // Waiting here instead of queueing is the back-pressure: unread requests stay in
                // the peer's TCP buffers, not in our memory. The semaphore is never closed.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return Ok(());
                };
                let call = if agent_only.is_some() && handler.server_only(method) {
                    refuse(method);
                    let refused: BoxFuture<'static, Result<Bytes, String>> =
                        Box::pin(async { Err(SERVERS_ONLY.to_owned()) });
                    refused
                } else {
                    handler.call(method, raw.slice_ref(body))
                };
                let (out, conn) = (out.clone(), conn.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let result = tokio::select! {
                        _ = conn.cancelled() => return,
                        result = call => result,
                    };
                    let fail = |reason| encode(&Frame::Fail { id, reason }, max);
                    let answer = match result {
                        Ok(body) => encode(&Frame::Reply { id, body: &body }, max),
                        Err(reason) => fail(reason),
                    };
                    // An answer too big for a frame becomes a Fail saying so.
                    let answer = answer.or_else(&fail);
                    if let Ok(frame) = answer {
                        let _ = out.send(frame).await;
                    }
                });
            }
            Frame::Subscribe { id, method, body } => {
                let cancel = conn.child_token();
                lock(&streams).insert(id, cancel.clone());
                let opening = if agent_only.is_some() && handler.server_only(method) {
                    refuse(method);
                    let refused: BoxFuture<'static, Result<mpsc::Receiver<Bytes>, String>> =
                        Box::pin(async { Err(SERVERS_ONLY.to_owned()) });
                    refused
                } else {
                    handler.subscribe(method, raw.slice_ref(body))
                };
                let (out, streams) = (out.clone(), streams.clone());
                tokio::spawn(async move {
                    let pushing = async {
                        let mut items = opening.await?;
                        while let Some(item) = items.recv().await {
                            let frame = encode(&Frame::Push { id, body: &item }, max)?;
                            out.send(frame)
                                .await
                                .map_err(|_| "connection closed".to_owned())?;
                        }
                        Ok::<_, String>(())
                    };
                    // Dropping `pushing` drops the handler's receiver, which is how it learns the
                    // subscriber is gone.
                    let ended = tokio::select! {
                        _ = cancel.cancelled() => None,
                        r = pushing => Some(r.err()),
                    };
                    lock(&streams).remove(&id);
                    if let Some(reason) = ended {
                        let end = |reason| encode(&Frame::End { id, reason }, max);
                        let end = end(reason).or_else(|why| end(Some(why)));
                        if let Ok(frame) = end {
                            let _ = out.send(frame).await;
                        }
                    }
                });
            }
            Frame::Cancel { id } => {
                if let Some(cancel) = lock(&streams).remove(&id) {
                    cancel.cancel();
                }
            }
            other => return Err(ConnectionError::Unexpected(other.kind())),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client

type Connecting = Shared<BoxFuture<'static, Result<Arc<Conn>, CallError>>>;

/// Client connections to peer servers: one persistent connection per address, opened on first use
/// and shared by all callers and clones. Cheap to clone. A broken connection is never reused: the
/// next call to its address replaces it with a fresh attempt.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    cluster: ClusterId,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    /// The connect attempt, pending or finished, per address. Concurrent first callers await the
    /// same shared attempt rather than each opening a connection.
    conns: Mutex<HashMap<String, Connecting>>,
}

/// A live client connection. Dropping the last handle (pool entry and in-flight callers) drops
/// the writer queue's sender, which ends the connection task and closes the socket.
struct Conn {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    /// The TLS generation it was made with ([`Tls::generation`]; 0 without TLS): after a
    /// certificate reload the pool opens new connections and lets these finish.
    generation: u64,
}

#[derive(Default)]
struct Pending {
    /// Set once the connection is gone; registering after that fails without sending.
    closed: Option<String>,
    calls: HashMap<u64, oneshot::Sender<Result<Bytes, CallError>>>,
    streams: HashMap<u64, mpsc::UnboundedSender<Result<Bytes, CallError>>>,
}

enum Waiter {
    Call(oneshot::Sender<Result<Bytes, CallError>>),
    Stream(mpsc::UnboundedSender<Result<Bytes, CallError>>),
}

/// Frees a call's pending slot when the caller stops waiting (timeout or cancellation), so a
/// late reply is dropped.
struct CallSlot<'a>(&'a Mutex<Pending>, u64);

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        lock(self.0).calls.remove(&self.1);
    }
}

impl Pool {
    /// A pool whose connections are TLS when `tls` has `verify_outgoing` on.
    pub fn new(cluster: ClusterId, limits: Limits, tls: Option<Arc<Tls>>) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                cluster,
                limits,
                tls,
                conns: Mutex::default(),
            }),
        }
    }

    /// Calls `method` on the server at `addr` ("host:port"). Connecting is bounded by
    /// [`Limits::connect_timeout`]; `timeout` then bounds the wait for the reply, after which
    /// the result is `Lost` and a late reply is discarded.
    pub async fn call(
        &self,
        addr: &str,
        method: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let (tx, rx) = oneshot::channel();
        let (conn, id) = self.send(addr, method, &body, Waiter::Call(tx)).await?;
        let _slot = CallSlot(&conn.pending, id);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Lost(format!("connection to {addr} closed"))),
            Err(_) => Err(CallError::Lost(format!(
                "timed out after {timeout:?} ({addr})"
            ))),
        }
    }

    /// Opens a server-pushed stream. Returns once the request is sent; a handler that refuses
    /// it shows up as `Some(Err(Remote))` from [`Subscription::next`].
    pub async fn subscribe(
        &self,
        addr: &str,
        method: u16,
        body: Bytes,
    ) -> Result<Subscription, CallError> {
        let (tx, items) = mpsc::unbounded_channel();
        let (conn, id) = self.send(addr, method, &body, Waiter::Stream(tx)).await?;
        Ok(Subscription { conn, id, items })
    }

    /// Connects if needed, registers `waiter` under a fresh id and queues the request.
    async fn send(
        &self,
        addr: &str,
        method: u16,
        body: &[u8],
        waiter: Waiter,
    ) -> Result<(Arc<Conn>, u64), CallError> {
        let conn = self.conn(addr).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = match waiter {
            Waiter::Call(_) => Frame::Call { id, method, body },
            Waiter::Stream(_) => Frame::Subscribe { id, method, body },
        };
        let frame = encode(&frame, self.inner.limits.max_frame).map_err(CallError::TooLarge)?;
        let mut pending = lock(&conn.pending);
        if let Some(why) = &pending.closed {
            return Err(CallError::Unreachable(why.clone())); // closed before we sent anything
        }
        match waiter {
            Waiter::Call(tx) => drop(pending.calls.insert(id, tx)),
            Waiter::Stream(tx) => drop(pending.streams.insert(id, tx)),
        }
        // A send error means the connection task just ended; its shutdown answers the waiter.
        let _ = conn.tx.send(frame);
        drop(pending);
        Ok((conn, id))
    }

    /// Forgets the connection to `addr`: the next call reconnects. Calls already in flight on
    /// it finish normally; the socket closes after the last of them.
    pub fn forget(&self, addr: &str) {
        lock(&self.inner.conns).remove(addr);
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, CallError> {
        let attempt = {
            let mut conns = lock(&self.inner.conns);
            let generation = self.inner.tls.as_ref().map_or(0, |t| t.generation());
            let usable = |a: &&Connecting| match a.peek() {
                None => true,
                Some(Ok(conn)) => {
                    conn.generation == generation && lock(&conn.pending).closed.is_none()
                }
                Some(Err(_)) => false, // a failed or refused attempt is never reused
            };
            match conns.get(addr).filter(usable) {
                Some(attempt) => attempt.clone(),
                None => {
                    let inner = &self.inner;
                    let (cluster, limits) = (inner.cluster.clone(), inner.limits.clone());
                    let attempt = connect(addr.to_owned(), cluster, limits, inner.tls.clone())
                        .boxed()
                        .shared();
                    conns.insert(addr.to_owned(), attempt.clone());
                    attempt
                }
            }
        };
        attempt.await
    }
}

async fn connect(
    addr: String,
    cluster: ClusterId,
    limits: Limits,
    tls: Option<Arc<Tls>>,
) -> Result<Arc<Conn>, CallError> {
    let attempt = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| CallError::Unreachable(format!("connect to {addr}: {e}")))?;
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(peer = %addr, error = %e, "set_nodelay failed");
        }
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        match tls.as_ref().and_then(|t| t.rpc_client()) {
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| CallError::Unreachable(format!("TLS with {addr}: {e}")))?;
                open(stream, &addr, &cluster, &limits, generation).await
            }
            None => open(tcp, &addr, &cluster, &limits, generation).await,
        }
    };
    tokio::time::timeout(limits.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            let waited = limits.connect_timeout;
            Err(CallError::Unreachable(format!(
                "connect to {addr} timed out after {waited:?}"
            )))
        })
}

/// Handshakes on an established stream and starts the connection's reader/writer task.
async fn open<IO>(
    io: IO,
    addr: &str,
    cluster: &ClusterId,
    limits: &Limits,
    generation: u64,
) -> Result<Arc<Conn>, CallError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let mut reader = FramedRead::new(r, codec(limits));
    let mut writer = FramedWrite::new(w, codec(limits));
    let handshake = async {
        let hello = Frame::Hello {
            magic: MAGIC,
            version: VERSION,
            cluster: cluster(),
        };
        let hello = encode(&hello, limits.max_frame)?;
        writer.send(hello).await.map_err(|e| e.to_string())?;
        let answer = reader.next().await.ok_or("closed during the handshake")?;
        let answer = answer.map_err(|e| e.to_string())?.freeze();
        match decode(&answer).map_err(|e| e.to_string())? {
            Frame::Welcome { version, .. } if version == VERSION => Ok(()),
            Frame::Welcome { version, .. } => {
                Err(format!("speaks version {version}, not {VERSION}"))
            }
            Frame::Refused { reason } => Err(format!("refused: {reason}")),
            other => Err(format!("unexpected {} frame in handshake", other.kind())),
        }
    };
    let handshake: Result<(), String> = handshake.await;
    handshake.map_err(|why| CallError::Unreachable(format!("{addr}: {why}")))?;

    let (tx, mut queue) = mpsc::unbounded_channel();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (task_pending, addr) = (pending.clone(), addr.to_owned());
    tokio::spawn(async move {
        let why = tokio::select! {
            r = read_replies(&mut reader, &task_pending) => match r {
                Ok(()) => format!("{addr} closed the connection"),
                Err(e) => {
                    warn!(peer = %addr, error = %e, "closing RPC connection");
                    format!("connection to {addr} broke: {e}")
                }
            },
            r = write_loop(writer, stream::poll_fn(|cx| queue.poll_recv(cx))) => match r {
                Ok(()) => format!("connection to {addr} no longer used"),
                Err(e) => format!("writing to {addr} failed: {e}"),
            },
        };
        let mut pending = lock(&task_pending);
        for (_, tx) in pending.calls.drain() {
            let _ = tx.send(Err(CallError::Lost(why.clone())));
        }
        for (_, tx) in pending.streams.drain() {
            let _ = tx.send(Err(CallError::Lost(why.clone())));
        }
        pending.closed = Some(why);
    });
    Ok(Arc::new(Conn {
        tx,
        pending,
        next_id: AtomicU64::new(1),
        generation,
    }))
}

async fn read_replies<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    pending: &Mutex<Pending>,
) -> Result<(), ConnectionError> {
    while let Some(raw) = reader.next().await {
        let raw = raw?.freeze();
        let frame = decode(&raw)?;
        let mut pending = lock(pending);
        // Unknown ids are calls that timed out or streams that were dropped: ignore them.
        match frame {
            Frame::Reply { id, body } => {
                if let Some(tx) = pending.calls.remove(&id) {
                    let _ = tx.send(Ok(raw.slice_ref(body)));
                }
            }
            Frame::Fail { id, reason } => {
                if let Some(tx) = pending.calls.remove(&id) {
                    let _ = tx.send(Err(CallError::Remote(reason)));
                }
            }
            Frame::Push { id, body } => {
                if let Some(tx) = pending.streams.get(&id) {
                    let _ = tx.send(Ok(raw.slice_ref(body)));
                }
            }
            Frame::End { id, reason } => {
                if let (Some(tx), Some(reason)) = (pending.streams.remove(&id), reason) {
                    let _ = tx.send(Err(CallError::Remote(reason)));
                }
            }
            other => return Err(ConnectionError::Unexpected(other.kind())),
        }
    }
    Ok(())
}

/// A server-pushed stream opened by [`Pool::subscribe`]. Dropping it cancels the stream.
/// Pushed items are buffered here without bound (a full buffer would stall every other call on
/// the connection), so the server-side producer sets the pace.
pub struct Subscription {
    conn: Arc<Conn>,
    id: u64,
    items: mpsc::UnboundedReceiver<Result<Bytes, CallError>>,
}

impl Subscription {
    /// The next pushed item, in order. `Some(Err(Remote))` if the handler refused or failed the
    /// stream, `Some(Err(Lost))` if the connection broke; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Bytes, CallError>> {
        self.items.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Still registered = the server may still be pushing; a finished stream needs no Cancel.
        if lock(&self.conn.pending).streams.remove(&self.id).is_some()
            && let Ok(frame) = encode(&Frame::Cancel { id: self.id }, usize::MAX)
        {
            let _ = self.conn.tx.send(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;
    use tokio::time::timeout;
    use tokio_util::codec::Framed;

    const ECHO: u16 = 1;
    const DELAYED_ECHO: u16 = 2; // first 8 bytes of the body: delay in ms
    const FAIL: u16 = 3;
    const HANG: u16 = 4;
    const COUNT: u16 = 10; // pushes "0".."4" then ends
    const HOLD: u16 = 11; // pushes "first", keeps the sender in `held`
    const WAIT: Duration = Duration::from_secs(5);
    const LONG: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct TestHandler {
        entered_hang: Arc<Notify>,
        held: Mutex<Option<mpsc::Sender<Bytes>>>,
    }

    impl Handler for TestHandler {
        fn call(&self, method: u16, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
            if method == HANG {
                self.entered_hang.notify_one();
            }
            Box::pin(async move {
                match method {
                    ECHO => Ok(body),
                    DELAYED_ECHO => {
                        let ms = u64::from_be_bytes(body[..8].try_into().unwrap());
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(body)
                    }
                    FAIL => Err(format!("boom: {}", String::from_utf8_lossy(&body))),
                    HANG => std::future::pending().await,
                    _ => Err("no such method".into()),
                }
            })
        }

        fn subscribe(
            &self,
            method: u16,
            _: Bytes,
        ) -> BoxFuture<'static, Result<mpsc::Receiver<Bytes>, String>> {
            let (tx, rx) = mpsc::channel(4);
            let opened = match method {
                COUNT => {
                    tokio::spawn(async move {
                        for i in 0..5 {
                            let _ = tx.send(Bytes::from(i.to_string())).await;
                        }
                    });
                    Ok(rx)
                }
                HOLD => {
                    tx.try_send(Bytes::from_static(b"first")).unwrap();
                    *lock(&self.held) = Some(tx);
                    Ok(rx)
                }
                _ => Err("no such stream".into()),
            };
            Box::pin(async move { opened })
        }
    }

    fn cluster(id: &'static str) -> ClusterId {
        Arc::new(move || id.to_owned())
    }

    fn pool(id: &'static str) -> Pool {
        Pool::new(cluster(id), Limits::default(), None)
    }

    /// Serves `handler` on `listener` until the returned token is cancelled.
    fn serve_on(
        listener: TcpListener,
        handler: Arc<TestHandler>,
        id: &'static str,
    ) -> CancellationToken {
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            handler,
            cluster(id),
            Limits::default(),
            None,
            stop.clone(),
        ));
        stop
    }

    async fn start(handler: Arc<TestHandler>, id: &'static str) -> (String, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (addr, serve_on(listener, handler, id))
    }

    async fn call(
        pool: &Pool,
        addr: &str,
        method: u16,
        within: Duration,
    ) -> Result<Bytes, CallError> {
        pool.call(addr, method, Bytes::from_static(b"ping"), within)
            .await
    }

    async fn echo_ok(pool: &Pool, addr: &str) {
        assert_eq!(call(pool, addr, ECHO, WAIT).await.unwrap(), "ping");
    }

    /// A raw client that sends one Hello and returns the server's answer.
    async fn raw_hello(addr: &str, magic: u64, version: u32) -> (RawConn, Bytes) {
        let mut framed = Framed::new(
            TcpStream::connect(addr).await.unwrap(),
            LengthDelimitedCodec::new(),
        );
        let hello = Frame::Hello {
            magic,
            version,
            cluster: String::new(),
        };
        framed
            .send(encode(&hello, usize::MAX).unwrap())
            .await
            .unwrap();
        let answer = timeout(WAIT, framed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        (framed, answer.freeze())
    }

    type RawConn = Framed<TcpStream, LengthDelimitedCodec>;

    async fn assert_closed(framed: &mut RawConn) {
        let next = timeout(WAIT, framed.next())
            .await
            .expect("connection left open");
        assert!(
            next.is_none_or(|r| r.is_err()),
            "expected close, got a frame"
        );
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_connection_and_get_their_own_replies() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (handler, stop) = (Arc::new(TestHandler::default()), CancellationToken::new());
                tokio::spawn(serve_connection(
                    tcp,
                    peer,
                    handler,
                    cluster(""),
                    Limits::default(),
                    Admission::Server,
                    stop,
                ));
            }
        });
        let (pool, n) = (pool(""), 200u64);
        // Later calls sleep less, so replies come back in reverse order. Run one after another,
        // the delays would add up to 20 s and hit the 5 s timeout.
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let (pool, addr) = (pool.clone(), addr.clone());
                let body = Bytes::from([(n - i).to_be_bytes(), i.to_be_bytes()].concat());
                tokio::spawn(async move {
                    (
                        body.clone(),
                        pool.call(&addr, DELAYED_ECHO, body, WAIT).await,
                    )
                })
            })
            .collect();
        for call in calls {
            let (sent, reply) = call.await.unwrap();
            assert_eq!(reply.unwrap(), sent);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn handler_error_is_remote() {
        let (addr, _stop) = start(Arc::default(), "").await;
        let err = call(&pool(""), &addr, FAIL, WAIT).await.unwrap_err();
        assert_eq!(err, CallError::Remote("boom: ping".into()));
    }

    #[tokio::test]
    async fn cluster_mismatch_is_refused_and_empty_id_accepted() {
        let (addr, _stop) = start(Arc::default(), "alpha").await;
        let err = call(&pool("beta"), &addr, ECHO, WAIT).await.unwrap_err();
        assert!(
            err.is_unreachable() && err.to_string().contains("belongs to cluster alpha"),
            "{err}"
        );
        echo_ok(&pool(""), &addr).await;
        echo_ok(&pool("alpha"), &addr).await;
        let (addr, _stop) = start(Arc::default(), "").await;
        echo_ok(&pool("beta"), &addr).await;
    }

    #[tokio::test]
    async fn wrong_version_or_magic_is_refused_then_closed() {
        let (addr, _stop) = start(Arc::default(), "").await;
        let cases = [
            (MAGIC, 99, ["version 99", "version 2"]),
            (7, VERSION, ["bad magic", "0x0000000000000007"]),
        ];
        for (magic, version, expected) in cases {
            let (mut framed, answer) = raw_hello(&addr, magic, version).await;
            match decode(&answer).unwrap() {
                Frame::Refused { reason } => {
                    assert!(expected.iter().all(|e| reason.contains(e)), "{reason}")
                }
                other => panic!("expected Refused, got {other:?}"),
            }
            assert_closed(&mut framed).await;
        }
        echo_ok(&pool(""), &addr).await;
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_close_only_that_connection() {
        let (addr, _stop) = start(Arc::default(), "").await;
        let pool = pool("");
        echo_ok(&pool, &addr).await;

        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        let read = timeout(WAIT, tcp.read_to_end(&mut Vec::new())).await;
        // Ok(0 bytes) or a reset: either way the server hung up.
        assert!(
            read.expect("oversized frame left open")
                .map_or(true, |n| n == 0)
        );

        let (mut framed, answer) = raw_hello(&addr, MAGIC, VERSION).await;
        assert!(matches!(decode(&answer).unwrap(), Frame::Welcome { .. }));
        framed
            .send(Bytes::from_static(b"\xc1 not msgpack"))
            .await
            .unwrap();
        assert_closed(&mut framed).await;

        echo_ok(&pool, &addr).await; // the pooled connection opened first is untouched
    }

    #[tokio::test]
    async fn server_stopped_mid_call_is_lost_then_reconnects() {
        let handler = Arc::new(TestHandler::default());
        let (addr, stop) = start(handler.clone(), "").await;
        let pool = pool("");
        let (pool2, addr2) = (pool.clone(), addr.clone());
        let pending = tokio::spawn(async move { call(&pool2, &addr2, HANG, LONG).await });
        timeout(WAIT, handler.entered_hang.notified())
            .await
            .unwrap();
        stop.cancel();
        let result = timeout(WAIT, pending)
            .await
            .expect("pending call not failed");
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, CallError::Lost(_)), "{err}");

        let _stop = serve_on(TcpListener::bind(&addr).await.unwrap(), handler, "");
        echo_ok(&pool, &addr).await;
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = call(&pool(""), &addr, ECHO, WAIT).await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
    }

    #[tokio::test]
    async fn subscription_pushes_in_order_and_drop_cancels() {
        let handler = Arc::new(TestHandler::default());
        let (addr, _stop) = start(handler.clone(), "").await;
        let pool = pool("");

        let mut sub = pool.subscribe(&addr, COUNT, Bytes::new()).await.unwrap();
        for i in 0..5 {
            let item = timeout(WAIT, sub.next()).await.unwrap();
            assert_eq!(item, Some(Ok(Bytes::from(i.to_string()))));
        }
        assert_eq!(timeout(WAIT, sub.next()).await.unwrap(), None);

        let mut refused = pool.subscribe(&addr, 999, Bytes::new()).await.unwrap();
        let first = timeout(WAIT, refused.next()).await.unwrap();
        assert_eq!(first, Some(Err(CallError::Remote("no such stream".into()))));
        assert_eq!(timeout(WAIT, refused.next()).await.unwrap(), None);

        let mut sub = pool.subscribe(&addr, HOLD, Bytes::new()).await.unwrap();
        let first = timeout(WAIT, sub.next()).await.unwrap();
        assert_eq!(first, Some(Ok(Bytes::from_static(b"first"))));
        let tx = lock(&handler.held).take().unwrap();
        drop(sub);
        timeout(WAIT, tx.closed())
            .await
            .expect("server kept the stream after the client dropped it");
    }

    #[tokio::test]
    async fn timeout_is_lost_and_pool_keeps_working() {
        let (addr, _stop) = start(Arc::default(), "").await;
        let pool = pool("");
        let err = call(&pool, &addr, HANG, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Lost(why) if why.contains("timed out")),
            "{err}"
        );
        echo_ok(&pool, &addr).await;
    }
}
