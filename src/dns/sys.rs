//! Every system call of the UDP receive loops, in one place: `recvmmsg`/`sendmmsg` over a
//! batch of fixed buffers, kernel receive timestamps, `poll`, and the socket's inode. Hand
//! written on `libc` because no maintained crate offers batched receive with per-packet
//! timestamps and no allocation per call; every `unsafe` block states why it is sound.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::Socket;

/// Packets taken per system call.
pub(super) const BATCH: usize = 64;
/// The largest query accepted over UDP (larger ones are dropped as malformed).
pub(super) const MAX_QUERY: usize = 2048;
/// Room for the largest UDP answer we send.
pub(super) const MAX_ANSWER: usize = 4096;
/// How often an idle loop checks whether to stop.
pub(super) const IDLE_POLL_MS: i32 = 200;

/// Asks the kernel to stamp each received packet with its arrival time (`SO_TIMESTAMPNS`).
pub(super) fn set_receive_timestamps(socket: &Socket) -> io::Result<()> {
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

/// The socket's inode, which names it in `/proc/net/udp*`.
pub(super) fn socket_inode(socket: &UdpSocket) -> io::Result<u64> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct for a valid descriptor.
    let rc = unsafe { libc::fstat(socket.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded.
    Ok(unsafe { stat.assume_init() }.st_ino)
}

/// The buffers of one batch; `mmsghdr`s point into them, so they never move once built.
pub(super) struct Batch {
    pub(super) queries: Vec<[u8; MAX_QUERY]>,
    pub(super) sources: Vec<libc::sockaddr_storage>,
    pub(super) controls: Vec<[u64; 8]>,
    pub(super) query_iovs: Vec<libc::iovec>,
    pub(super) query_hdrs: Vec<libc::mmsghdr>,
    pub(super) answers: Vec<Vec<u8>>,
    pub(super) answer_iovs: Vec<libc::iovec>,
    pub(super) answer_hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub(super) fn new() -> Box<Batch> {
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

    /// Takes up to `BATCH` waiting packets without blocking (`recvmmsg`); the count, or -1
    /// with the error in `errno`.
    pub(super) fn receive(&mut self, fd: libc::c_int) -> isize {
        // SAFETY: the headers point into `self` (armed by `arm`), which outlives the call.
        unsafe {
            libc::recvmmsg(
                fd,
                self.query_hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            ) as isize
        }
    }

    /// Resets the receive headers (the kernel overwrites lengths and flags).
    pub(super) fn arm(&mut self) {
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
    pub(super) fn received_at(&self, i: usize) -> Option<i128> {
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

    pub(super) fn source(&self, i: usize) -> Option<SocketAddr> {
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
    pub(super) fn address(&mut self, slot: usize, i: usize) {
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

/// Now on the realtime clock (the one the kernel's receive timestamps use), in nanoseconds.
pub(super) fn realtime_ns() -> i128 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: clock_gettime fills the struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, ts.as_mut_ptr());
        let ts = ts.assume_init();
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }
}

/// Sends every queued answer (`sendmmsg`), skipping one that cannot be sent; returns how many
/// were handled.
pub(super) fn send_all(fd: libc::c_int, hdrs: &mut [libc::mmsghdr]) -> usize {
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

/// Waits until the socket has packets, or `IDLE_POLL_MS` passed (so the loop sees `stop`).
pub(super) fn wait_readable(fd: libc::c_int) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pollfd, 1, IDLE_POLL_MS) };
}
