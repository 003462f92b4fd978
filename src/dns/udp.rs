//! The UDP front end: receive loops that answer plain queries for the Beacon domain from
//! pre-encoded answers, and hand everything else to the full hickory handler.
//!
//! Each loop is an OS thread with its own socket (`SO_REUSEPORT`, one per core by default), its
//! own answer cache and its own buffers. It takes up to `BATCH` packets per `recvmmsg` and
//! sends the answers with one `sendmmsg`: no task spawn, no allocation and no lock per query.
//!
//! Overload: when a batch comes back full there is a backlog, and queries that have already
//! waited longer than `max_queue_delay` (by their kernel receive timestamp) are dropped and
//! counted instead of answered late; the queue to the full path is bounded the same way. So the
//! latency of answered queries stays bounded whatever the offered load. Queries that queued
//! while a loop that was keeping up was away (idle, or descheduled for longer than the limit)
//! are always answered: a stall of ours is not the client's overload.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
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
use crate::metrics::DnsMetrics;
use crate::tasks::Tasks;

/// Packets taken per system call.
const BATCH: usize = 64;
/// The largest query accepted over UDP (larger ones are dropped as malformed).
const MAX_QUERY: usize = 2048;
/// Room for the largest UDP answer we send.
const MAX_ANSWER: usize = 4096;
/// Queries waiting for the full path (forwarding, static zones, errors) before new ones drop.
const FULL_PATH_QUEUE: usize = 4096;
/// Full-path queries in flight at once (each may wait on a recursor).
const FULL_PATH_CONCURRENCY: usize = 1024;
/// A gap between batches shorter than this is never taken for the loop being away.
const AWAY_AT_LEAST: i128 = 2_000_000;
/// How often an idle loop checks whether to stop.
const IDLE_POLL_MS: i32 = 200;

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

fn set_receive_timestamps(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, an int option with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

fn socket_inode(socket: &UdpSocket) -> io::Result<u64> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct for a valid descriptor.
    let rc = unsafe { libc::fstat(socket.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded.
    Ok(unsafe { stat.assume_init() }.st_ino)
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

/// The buffers of one batch; `mmsghdr`s point into them, so they never move once built.
struct Batch {
    queries: Vec<[u8; MAX_QUERY]>,
    sources: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    query_iovs: Vec<libc::iovec>,
    query_hdrs: Vec<libc::mmsghdr>,
    answers: Vec<Vec<u8>>,
    answer_iovs: Vec<libc::iovec>,
    answer_hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed_hdr = || unsafe { zeroed::<libc::mmsghdr>() };
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut batch = Box::new(Batch {
            queries: vec![[0; MAX_QUERY]; BATCH],
            // SAFETY: as above.
            sources: vec![unsafe { zeroed() }; BATCH],
            controls: vec![[0; 8]; BATCH],
            query_iovs: vec![empty_iov; BATCH],
            query_hdrs: (0..BATCH).map(|_| zeroed_hdr()).collect(),
            answers: (0..BATCH).map(|_| Vec::with_capacity(MAX_ANSWER)).collect(),
            answer_iovs: vec![empty_iov; BATCH],
            answer_hdrs: (0..BATCH).map(|_| zeroed_hdr()).collect(),
        });
        let b = &mut *batch;
        for i in 0..BATCH {
            b.query_iovs[i] = libc::iovec {
                iov_base: b.queries[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
        }
        batch
    }

    /// Resets the receive headers (the kernel overwrites lengths and flags).
    fn arm(&mut self) {
        for i in 0..BATCH {
            let hdr = &mut self.query_hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.sources[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.query_iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; 8]>() as _;
            hdr.msg_flags = 0;
            self.query_hdrs[i].msg_len = 0;
        }
    }

    /// The kernel's receive time of packet `i`, in nanoseconds of the realtime clock.
    fn received_at(&self, i: usize) -> Option<i128> {
        let hdr = &self.query_hdrs[i].msg_hdr;
        // SAFETY: the control buffer and length are what the kernel filled in.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    return Some(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128);
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        None
    }

    fn source(&self, i: usize) -> Option<SocketAddr> {
        let storage = &self.sources[i];
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Queues answer slot `slot` to the source of query `i`.
    fn address(&mut self, slot: usize, i: usize) {
        self.answer_iovs[slot] = libc::iovec {
            iov_base: self.answers[slot].as_mut_ptr().cast(),
            iov_len: self.answers[slot].len(),
        };
        let hdr = &mut self.answer_hdrs[slot].msg_hdr;
        hdr.msg_name = (&raw mut self.sources[i]).cast();
        hdr.msg_namelen = self.query_hdrs[i].msg_hdr.msg_namelen;
        hdr.msg_iov = &raw mut self.answer_iovs[slot];
        hdr.msg_iovlen = 1;
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
    }
}

fn realtime_ns() -> i128 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: clock_gettime fills the struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, ts.as_mut_ptr());
        let ts = ts.assume_init();
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }
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
            // SAFETY: the headers point into `batch`, which outlives the call.
            let received = unsafe {
                libc::recvmmsg(
                    fd,
                    batch.query_hdrs.as_mut_ptr(),
                    BATCH as _,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
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
            let state = self.handler.view().load();
            self.cache.sync_generation(self.handler.generation());
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
                    .answer(&self.handler, &state, packet, src, &mut answer);
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
fn send_all(fd: libc::c_int, hdrs: &mut [libc::mmsghdr]) -> usize {
    let mut sent = 0;
    while sent < hdrs.len() {
        let rest = &mut hdrs[sent..];
        // SAFETY: each header points at an answer buffer and address that outlive the call.
        let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as _, 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A full send buffer or an unreachable client: skip this answer, send the rest.
            tracing::debug!(%error, "dns: udp send failed");
            sent += 1;
            continue;
        }
        sent += n as usize;
    }
    sent
}

fn wait_readable(fd: libc::c_int) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pollfd, 1, IDLE_POLL_MS) };
}

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
            socket: socket.clone(),
            dst: src,
            metrics: metrics.clone(),
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
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    metrics: Arc<DnsMetrics>,
}

impl UdpReply {
    fn send(&self, bytes: &[u8]) {
        match self.socket.send_to(bytes, self.dst) {
            Ok(_) => {
                self.metrics.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tracing::debug!(%error, dst = %self.dst, "dns: udp send failed"),
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
        let limit = super::udp_limit(response.edns());
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
