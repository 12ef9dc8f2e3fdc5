//! A connection's transport: the socket's write half, the output buffer, where the handshake is, the
//! negotiated limits, heartbeats and the closing deadline. Knows nothing of channels.
//!
//! Generic over the write half `W`: a plain TCP connection writes to its `OwnedWriteHalf` directly (no
//! indirection), an AMQPS one to the write half of its TLS stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok.
    Closing,
    /// Done: close the socket.
    Closed,
}

impl Phase {
    pub fn is_handshake(self) -> bool {
        matches!(self, Phase::AwaitStartOk | Phase::AwaitTuneOk | Phase::AwaitOpen)
    }
}

pub(super) struct Transport<W> {
    pub peer: SocketAddr,
    wr: W,
    pub out: Output,
    pub phase: Phase,
    pub channel_max: u16,
    /// Negotiated heartbeat interval, seconds (0 = none).
    pub heartbeat: u16,
    pub last_recv: Instant,
    /// A frame arrived since the last heartbeat check moved `last_recv` (set per frame instead of a
    /// clock read per frame; RabbitMQ's heartbeat monitor likewise checks once per interval whether
    /// anything was received).
    pub received: bool,
    pub closing_deadline: Option<tokio::time::Instant>,
    /// The client's frame_max limit on new frames from the decoder, applied after tune-ok.
    pub pending_frame_max: Option<u32>,
}

impl<W> Transport<W> {
    pub fn new(peer: SocketAddr, wr: W) -> Transport<W> {
        Transport {
            peer,
            wr,
            out: Output::new(),
            phase: Phase::AwaitStartOk,
            channel_max: 0,
            heartbeat: 0,
            last_recv: Instant::now(),
            received: false,
            closing_deadline: None,
            pending_frame_max: None,
        }
    }

    pub fn send_method(&mut self, channel: u16, m: &Method) {
        self.out.method(channel, m);
    }

    /// The client missed two heartbeat intervals.
    pub fn heartbeat_missed(&mut self, secs: u16) -> bool {
        if std::mem::take(&mut self.received) {
            self.last_recv = Instant::now();
        }
        self.last_recv.elapsed() > Duration::from_secs(secs as u64 * 2)
    }
}

impl<W: AsyncWrite + Unpin> Transport<W> {
    /// Writes everything produced since the last write, in one `write_all`.
    pub async fn write_out(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.wr.write_all(self.out.pending()).await;
        self.out.written();
        r
    }

    /// Writes raw bytes (the protocol header we answer a bad header with).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await
    }

    /// Shuts our write side down: the client sees EOF.
    pub async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}
