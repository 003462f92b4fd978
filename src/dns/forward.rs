//! Forwarding names outside Beacon's zones to the configured recursors (Consul's `recursors`).
//!
//! Each upstream is asked in turn (sequential, or starting from a random one) with
//! `recursor_timeout` per exchange; a NOERROR or NXDOMAIN answer is passed back as is, any other
//! result moves on to the next upstream, and when all fail the client gets SERVFAIL. Answers are
//! not cached here: the upstream resolver caches. UDP first, TCP when the upstream truncates.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Clone, Debug)]
pub struct Forwarder {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub random: bool,
}

impl Forwarder {
    /// Asks the upstreams; None when every one failed.
    pub async fn resolve(&self, query: &Query) -> Option<Message> {
        let start = if self.random && !self.servers.is_empty() {
            rand::rng().random_range(0..self.servers.len())
        } else {
            0
        };
        for i in 0..self.servers.len() {
            let server = self.servers[(start + i) % self.servers.len()];
            match tokio::time::timeout(self.timeout, exchange(server, query)).await {
                Ok(Ok(reply))
                    if matches!(
                        reply.metadata.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    ) =>
                {
                    return Some(reply);
                }
                Ok(Ok(reply)) => {
                    tracing::debug!(%server, rcode = %reply.metadata.response_code, "recursor refused")
                }
                Ok(Err(e)) => tracing::debug!(%server, error = %e, "recursor failed"),
                Err(_) => tracing::debug!(%server, "recursor timed out"),
            }
        }
        None
    }
}

fn request(query: &Query) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    m
}

async fn exchange(server: SocketAddr, query: &Query) -> std::io::Result<Message> {
    let msg = request(query);
    let bytes = msg.to_vec().map_err(std::io::Error::other)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let reply = loop {
        let n = sock.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == msg.metadata.id => break m,
            _ => continue,
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut stream = TcpStream::connect(server).await?;
    stream.write_u16(bytes.len() as u16).await?;
    stream.write_all(&bytes).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}
