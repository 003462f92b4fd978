//! The UDP front end: receive loops that answer plain queries for the Beacon domain from
//! pre-encoded answers, and hand everything else to the full hickory handler.
//!
//! Each loop is an OS thread with its own socket (`SO_REUSEPORT`, one per core by default), its
//! own answer cache and its own buffers. It takes up to `BATCH` packets per `recvmmsg` and
//! sends the answers with one `sendmmsg`: no task spawn, no allocation and no lock per answer
//! it has pre-encoded (building one on a client agent may take the views' lock and start a
//! view, once per name).
//!
//! Overload: when a batch comes back full there is a backlog, and queries that have already
//! waited longer than `max_queue_delay` (by their kernel receive timestamp) are dropped and
//! counted instead of answered late; the queue to the full path is bounded the same way. So the
//! latency of answered queries stays bounded whatever the offered load. Queries that queued
//! while a loop that was keeping up was away (idle, or descheduled for longer than the limit)
//! are always answered: a stall of ours is not the client's overload.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::sync::{Semaphore, mpsc};

use super::DnsHandler;
use super::cache::AnswerCache;
use super::sys::{
    BATCH, Batch, realtime_ns, send_all, set_receive_timestamps, socket_inode, wait_readable,
};
use crate::metrics::DnsMetrics;
use crate::tasks::Tasks;

/// Queries waiting for the full path (forwarding, static zones, errors) before new ones drop.
const FULL_PATH_QUEUE: usize = 4096;
/// Full-path queries in flight at once (each may wait on a recursor).
const FULL_PATH_CONCURRENCY: usize = 1024;
/// A gap between batches shorter than this is never taken for the loop being away.
const AWAY_AT_LEAST: i128 = 2_000_000;

/// Binds `count` UDP sockets sharing `addr` through `SO_REUSEPORT` (port 0: one free port).
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let first = socket(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count.max(1) {
        sockets.push(socket(bound)?);
    }
    Ok(sockets)
}

fn socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    // Room for bursts; the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    set_receive_timestamps(&socket)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

/// The running receive loops.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpServer {
    /// Starts one receive loop per socket; the full path runs on the current tokio runtime.
    pub fn start(
        handler: Arc<DnsHandler>,
        sockets: Vec<UdpSocket>,
        metrics: Arc<DnsMetrics>,
        max_queue_delay: Duration,
        tasks: &Tasks,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (full_tx, full_rx) = mpsc::channel(FULL_PATH_QUEUE);
        let reply_socket = Arc::new(sockets[0].try_clone()?);
        // Ends when the receive loops stop (they hold the queue's senders).
        tasks.spawn_essential(
            "dns-full-path",
            full_path(
                handler.clone(),
                full_rx,
                reply_socket,
                metrics.clone(),
                tasks.clone(),
            ),
        );
        let mut threads = Vec::new();
        for (n, socket) in sockets.into_iter().enumerate() {
            if let Ok(inode) = socket_inode(&socket) {
                metrics.watch_socket(inode);
            }
            let mut receiver = Receiver {
                socket,
                handler: handler.clone(),
                metrics: metrics.clone(),
                full_path: full_tx.clone(),
                stop: stop.clone(),
                max_queue_delay,
                cache: AnswerCache::new(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{n}"))
                    .spawn(move || receiver.run())?,
            );
        }
        Ok(UdpServer { stop, threads })
    }

    /// Stops the loops (within `IDLE_POLL_MS`) and waits for them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Receiver {
    socket: UdpSocket,
    handler: Arc<DnsHandler>,
    metrics: Arc<DnsMetrics>,
    full_path: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    stop: Arc<AtomicBool>,
    max_queue_delay: Duration,
    cache: AnswerCache,
}

impl Receiver {
    fn run(&mut self) {
        let mut batch = Batch::new();
        let fd = self.socket.as_raw_fd();
        let max_delay = self.max_queue_delay.as_nanos() as i128;
        // When the last batch was finished, and until when queries count as queued while the
        // loop was away.
        let mut last_batch_done = realtime_ns();
        let mut away_until = 0;
        let mut was_behind = false;
        while !self.stop.load(Ordering::Acquire) {
            batch.arm();
            let received = batch.receive(fd);
            if received < 0 {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => wait_readable(fd),
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::warn!(%error, "dns: udp receive failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                continue;
            }
            let received = received as usize;
            let now = realtime_ns();
            if !was_behind && now - last_batch_done > max_delay.max(AWAY_AT_LEAST) {
                // This loop was keeping up, then away (idle, or not scheduled): what queued
                // meanwhile is not a sign of overload and is answered, however old. A loop that
                // was already behind before the gap (say, throttled by a CPU quota) gets no
                // such allowance.
                away_until = now;
            }
            // A full batch means more are waiting: the server is behind.
            let behind = received == BATCH;
            was_behind = behind;
            let loaded = self.handler.load();
            self.cache.sync(self.handler.generation(), &loaded);
            let (mut hits, mut dropped, mut malformed, mut full) = (0, 0, 0, 0);
            let mut ready = 0;
            for i in 0..received {
                let len = batch.query_hdrs[i].msg_len as usize;
                if batch.query_hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len < 12 {
                    malformed += 1;
                    continue;
                }
                if behind
                    && batch
                        .received_at(i)
                        .is_some_and(|at| at > away_until && now - at > max_delay)
                {
                    dropped += 1;
                    continue;
                }
                let Some(src) = batch.source(i) else {
                    malformed += 1;
                    continue;
                };
                let packet = &batch.queries[i][..len];
                let mut answer = std::mem::take(&mut batch.answers[ready]);
                let hit = self
                    .cache
                    .answer(&self.handler, &loaded, packet, src, &mut answer);
                batch.answers[ready] = answer;
                if hit {
                    batch.address(ready, i);
                    ready += 1;
                    hits += 1;
                } else if src.port() == 0 {
                    malformed += 1;
                } else if self.full_path.try_send((packet.to_vec(), src)).is_ok() {
                    full += 1;
                } else {
                    dropped += 1;
                }
            }
            let sent = send_all(fd, &mut batch.answer_hdrs[..ready]);
            let m = &self.metrics;
            m.received.fetch_add(received as u64, Ordering::Relaxed);
            m.answered.fetch_add(sent as u64, Ordering::Relaxed);
            m.cache_hits.fetch_add(hits, Ordering::Relaxed);
            m.full_path.fetch_add(full, Ordering::Relaxed);
            m.dropped_overload.fetch_add(dropped, Ordering::Relaxed);
            m.dropped_malformed.fetch_add(malformed, Ordering::Relaxed);
            last_batch_done = realtime_ns();
        }
    }
}

/// Sends the answers with as few `sendmmsg` calls as the kernel allows; returns how many went.
/// Runs queries the cache cannot answer through the full handler, a bounded number at a time.
async fn full_path(
    handler: Arc<DnsHandler>,
    mut queue: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    socket: Arc<UdpSocket>,
    metrics: Arc<DnsMetrics>,
    tasks: Tasks,
) {
    let permits = Arc::new(Semaphore::new(FULL_PATH_CONCURRENCY));
    while let Some((packet, src)) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let reply = UdpReply {
            out: Out::Socket(socket.clone(), metrics.clone()),
            dst: src,
        };
        let handler = handler.clone();
        tasks.spawn(async move {
            handle_full(&handler, packet, reply).await;
            drop(permit);
        });
    }
}

async fn handle_full(handler: &DnsHandler, packet: Vec<u8>, reply: UdpReply) {
    let header = {
        let mut decoder = BinDecoder::new(&packet);
        Header::read(&mut decoder).ok()
    };
    let Some(header) = header else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        // Never answer answers (reflection).
        return;
    }
    match Request::from_bytes(packet, reply.dst, Protocol::Udp) {
        Ok(request) => {
            handler
                .handle_request::<_, TokioTime>(&request, reply)
                .await;
        }
        Err(error) => {
            tracing::debug!(%error, src = %reply.dst, "dns: malformed query");
            let mut metadata = Metadata::new(
                header.metadata.id,
                MessageType::Response,
                header.metadata.op_code,
            );
            metadata.response_code = ResponseCode::FormErr;
            reply.send_header(metadata);
        }
    }
}

/// Sends a full-path answer back through the receive socket.
#[derive(Clone)]
struct UdpReply {
    out: Out,
    dst: SocketAddr,
}

/// Where a full-path answer goes.
#[derive(Clone)]
enum Out {
    Socket(Arc<UdpSocket>, Arc<DnsMetrics>),
    /// Kept for the caller: the fuzz harness, which has no socket.
    Kept(Arc<std::sync::Mutex<Option<Vec<u8>>>>),
}

impl UdpReply {
    fn send(&self, bytes: &[u8]) {
        match &self.out {
            Out::Socket(socket, metrics) => match socket.send_to(bytes, self.dst) {
                Ok(_) => {
                    metrics.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => tracing::debug!(%error, dst = %self.dst, "dns: udp send failed"),
            },
            Out::Kept(kept) => *kept.lock().expect("kept answer") = Some(bytes.to_vec()),
        }
    }

    fn send_header(&self, metadata: Metadata) -> ResponseInfo {
        let header = Header {
            metadata,
            counts: HeaderCounts::default(),
        };
        if let Ok(bytes) = header.to_bytes() {
            self.send(&bytes);
        }
        ResponseInfo::from(header)
    }
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let limit = super::encode::udp_limit(response.edns());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        match response.destructive_emit(&mut encoder) {
            Ok(info) => {
                self.send(&bytes);
                Ok(info)
            }
            Err(error) => {
                tracing::warn!(%error, "dns: cannot encode an answer");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                Ok(self.send_header(metadata))
            }
        }
    }
}

/// One UDP query answered as a receive loop answers it (the pre-encoded answers first, the full
/// handler for what they leave), without sockets: the fuzz target's way in (`crate::fuzz`).
pub(crate) struct Harness {
    handler: Arc<DnsHandler>,
    cache: AnswerCache,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    pub(crate) fn new(handler: DnsHandler) -> Harness {
        Harness {
            handler: Arc::new(handler),
            cache: AnswerCache::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
        }
    }

    /// The answer sent to `packet` from 127.0.0.1:5353, if one is sent.
    pub(crate) fn answer(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.len() < 12 {
            return None;
        }
        let src = SocketAddr::from(([127, 0, 0, 1], 5353));
        let loaded = self.handler.load();
        self.cache.sync(self.handler.generation(), &loaded);
        let mut out = Vec::new();
        if self
            .cache
            .answer(&self.handler, &loaded, packet, src, &mut out)
        {
            return Some(out);
        }
        let kept = Arc::new(std::sync::Mutex::new(None));
        let reply = UdpReply {
            out: Out::Kept(kept.clone()),
            dst: src,
        };
        self.runtime
            .block_on(handle_full(&self.handler, packet.to_vec(), reply));
        kept.lock().expect("kept answer").take()
    }
}
