//! One client connection: the protocol header, the handshake, the frame loop, heartbeats and closing.
//!
//! A connection is one task. It reads frames, runs the methods of its channels, pulls deliveries for its
//! consumers from their queues, and writes everything it produced in one go before waiting again, so a burst
//! of deliveries and confirms leaves in few socket writes. No lock is held across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use protocol::{
    reply, ConnectionClose, ConnectionStart, ConnectionTune, FieldTable, FieldValue, Frame, FrameCodec,
    LongStr, Method, ShortStr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Broker, LoginError};
use crate::channel::{Channel, ConsumerState};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ConsumerId, Entry, Queue};
use crate::signal::{ConnEvent, ConnSignal};
use crate::vhost::VHost;

/// Write buffer size above which the connection writes before producing more deliveries.
pub const WRITE_HIGH_WATER: usize = 1 << 20;
/// Frames handled per wake-up before the connection writes what it produced.
const FRAMES_PER_ROUND: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok.
    Closing,
    /// Done: close the socket.
    Closed,
}

/// What the client told us it supports in its client-properties capabilities.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCaps {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

pub struct Conn {
    pub broker: Arc<Broker>,
    pub id: u64,
    pub peer: SocketAddr,
    phase: Phase,
    wr: OwnedWriteHalf,
    pub out: BytesMut,
    /// Negotiated frame_max (0 = no limit).
    pub frame_max: u32,
    pub channel_max: u16,
    heartbeat: u16,
    pub vhost: Option<Arc<VHost>>,
    pub user: String,
    pub caps: ClientCaps,
    pub channels: HashMap<u16, Channel>,
    pub consumers: HashMap<ConsumerId, ConsumerState>,
    pub signal: Arc<ConnSignal>,
    /// Consumers that may have messages and credit: pull for them before the next write.
    pub pull_list: Vec<ConsumerId>,
    pub exclusive_queues: Vec<Arc<Queue>>,
    pub route_scratch: Vec<router::Name>,
    pub settle_scratch: Vec<crate::channel::Unacked>,
    ready_scratch: Vec<ConsumerId>,
    pub pull_scratch: Vec<Entry>,
    last_recv: Instant,
    closing_deadline: Option<tokio::time::Instant>,
    /// The client's frame_max limit on new frames from the decoder, applied after tune-ok.
    pending_frame_max: Option<u32>,
}

/// Serves one accepted socket until it closes.
pub async fn serve(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let _ = socket.set_nodelay(true);
    let id = broker.next_connection_id();
    let (mut rd, wr) = socket.into_split();
    let handshake_timeout = broker.config.handshake_timeout;

    // Protocol header: exactly "AMQP" 0 0 9 1; anything else gets our header back and the socket closed.
    let mut header = [0u8; 8];
    match tokio::time::timeout(handshake_timeout, rd.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            debug!(%peer, "no protocol header before the handshake timeout");
            return;
        }
    }
    let mut conn = Conn {
        broker,
        id,
        peer,
        phase: Phase::AwaitStartOk,
        wr,
        out: BytesMut::with_capacity(64 * 1024),
        frame_max: protocol::FRAME_MIN_SIZE,
        channel_max: 0,
        heartbeat: 0,
        vhost: None,
        user: String::new(),
        caps: ClientCaps::default(),
        channels: HashMap::new(),
        consumers: HashMap::new(),
        signal: Arc::new(ConnSignal::new()),
        pull_list: Vec::new(),
        exclusive_queues: Vec::new(),
        route_scratch: Vec::new(),
        settle_scratch: Vec::new(),
        ready_scratch: Vec::new(),
        pull_scratch: Vec::new(),
        last_recv: Instant::now(),
        closing_deadline: None,
        pending_frame_max: None,
    };
    if header != protocol::PROTOCOL_HEADER {
        debug!(%peer, ?header, "bad protocol header");
        let _ = conn.wr.write_all(&protocol::PROTOCOL_HEADER).await;
        let _ = conn.wr.shutdown().await;
        return;
    }
    let mut framed = FramedRead::with_capacity(rd, FrameCodec::new(), 64 * 1024);
    conn.run(&mut framed, shutdown, handshake_timeout).await;
    conn.cleanup();
    // As RabbitMQ does: shut our write side down (the client sees close-ok, then a clean EOF), and read and
    // discard until the client closes too, for a few seconds at most. Closing with the client's bytes still
    // unread would make the kernel reset the connection, and the client would get ECONNRESET instead of
    // close-ok.
    let _ = conn.wr.shutdown().await;
    drain_until_eof(framed.get_mut()).await;
    debug!(%peer, id, "connection closed");
}

/// How long a closed connection keeps reading (and discarding) while it waits for the client's EOF.
const LINGER: Duration = Duration::from_secs(3);

async fn drain_until_eof(rd: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl Conn {
    async fn run(
        &mut self,
        framed: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
        shutdown: CancellationToken,
        handshake_timeout: Duration,
    ) {
        self.send_method(0, &Method::ConnectionStart(self.connection_start()));
        if self.write_out().await.is_err() {
            return;
        }
        let handshake_deadline = tokio::time::Instant::now() + handshake_timeout;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        let mut heartbeat_secs = 0u16;
        let mut durable = self.broker.durable_watch();
        loop {
            if heartbeat_secs != self.heartbeat && self.heartbeat > 0 {
                heartbeat_secs = self.heartbeat;
                let half = Duration::from_millis(self.heartbeat as u64 * 500);
                heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
            }
            // Pull work exists only while open (a closing connection has released its consumers), so this
            // branch is never ready without the pass below making progress.
            let has_pulls = self.phase == Phase::Open && !self.pull_list.is_empty();
            let handshaking = matches!(
                self.phase,
                Phase::AwaitStartOk | Phase::AwaitTuneOk | Phase::AwaitOpen
            );
            let awaiting_durable = self.awaiting_durable();
            let closing_deadline = self.closing_deadline;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.phase != Phase::Closing => {
                    self.start_close(AmqpError::new(reply::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'"));
                    self.closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                frame = framed.next() => {
                    if !self.on_read(frame) { break; }
                }
                _ = self.signal.notified() => self.on_signal(),
                r = durable.changed(), if awaiting_durable => {
                    if r.is_err() { /* store gone: confirms flushed at shutdown */ }
                }
                _ = heartbeat.tick(), if heartbeat_secs > 0 && self.phase == Phase::Open => {
                    if self.last_recv.elapsed() > Duration::from_secs(heartbeat_secs as u64 * 2) {
                        info!(peer = %self.peer, "missed heartbeats from client, timeout: {heartbeat_secs}s");
                        break;
                    }
                    protocol::write_heartbeat(&mut self.out);
                }
                _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                    info!(peer = %self.peer, "handshake timeout");
                    break;
                }
                _ = tokio::time::sleep_until(closing_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if closing_deadline.is_some() => { break; }
                _ = std::future::ready(()), if has_pulls => {}
            }
            // Handle whatever else is already buffered before writing.
            let mut eof = false;
            for _ in 0..FRAMES_PER_ROUND {
                if self.phase == Phase::Closed {
                    break;
                }
                match framed.next().now_or_never() {
                    Some(frame) => {
                        if !self.on_read(frame) {
                            eof = true;
                            break;
                        }
                    }
                    None => break,
                }
            }
            if let Some(max) = self.pending_frame_max.take() {
                framed.decoder_mut().set_max_frame_size(max);
            }
            if self.phase == Phase::Open {
                self.run_pulls();
                let durable_now = *durable.borrow_and_update();
                self.flush_confirms(durable_now);
            } else {
                self.pull_list.clear();
            }
            if self.write_out().await.is_err() || eof || self.phase == Phase::Closed {
                break;
            }
            // Tokio's cooperative budget: even if some branch above were always ready, the task yields
            // after a bounded amount of work, so one connection can never keep a worker from the others.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// Handles one read result. Returns false when the socket is finished.
    fn on_read(&mut self, frame: Option<Result<Frame, protocol::ProtocolError>>) -> bool {
        match frame {
            None => false,
            Some(Err(e)) => {
                debug!(peer = %self.peer, error = %e, "frame error");
                if self.phase != Phase::Closing {
                    self.start_close(AmqpError::from(e));
                }
                // The stream cannot be trusted after a framing error: close once the close frame is out.
                self.phase = Phase::Closed;
                true
            }
            Some(Ok(frame)) => {
                self.last_recv = Instant::now();
                if let Err(e) = self.on_frame(frame) {
                    self.start_close(e);
                }
                true
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> AmqpResult<()> {
        match self.phase {
            Phase::Closed => Ok(()),
            Phase::Closing => {
                // Only close and close-ok matter now.
                if let Frame::Method(0, m) = frame {
                    match m {
                        Method::ConnectionCloseOk(_) => self.phase = Phase::Closed,
                        Method::ConnectionClose(_) => {
                            self.send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                            self.phase = Phase::Closed;
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Phase::AwaitStartOk | Phase::AwaitTuneOk | Phase::AwaitOpen => self.on_handshake_frame(frame),
            Phase::Open => match frame {
                Frame::Heartbeat(0) => Ok(()),
                Frame::Heartbeat(_) => {
                    Err(AmqpError::unexpected_frame("heartbeat frame on non-zero channel"))
                }
                Frame::Method(0, m) => self.on_connection_method(m),
                Frame::Method(ch, m) => self.on_channel_frame(ch, Frame::Method(ch, m)),
                Frame::Header(0, _) | Frame::Body(0, _) => {
                    Err(AmqpError::unexpected_frame("content frame on channel 0"))
                }
                f @ (Frame::Header(ch, _) | Frame::Body(ch, _)) => self.on_channel_frame(ch, f),
            },
        }
    }

    fn on_handshake_frame(&mut self, frame: Frame) -> AmqpResult<()> {
        let m = match frame {
            Frame::Heartbeat(_) => return Ok(()),
            Frame::Method(0, m) => m,
            Frame::Method(_, m) => {
                return Err(AmqpError::command_invalid(format!(
                    "expected connection method during the handshake, got '{}'",
                    m.name()
                ))
                .on_method(m.class_id(), m.method_id()))
            }
            _ => return Err(AmqpError::unexpected_frame("content frame during the handshake")),
        };
        let (class_id, method_id) = (m.class_id(), m.method_id());
        let r = match (self.phase, m) {
            (_, Method::ConnectionClose(_)) => {
                self.send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                self.phase = Phase::Closed;
                Ok(())
            }
            (Phase::AwaitStartOk, Method::ConnectionStartOk(ok)) => self.on_start_ok(ok),
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(ok)) => self.on_tune_ok(ok),
            (Phase::AwaitOpen, Method::ConnectionOpen(open)) => self.on_open(open),
            (_, m) => Err(AmqpError::command_invalid(format!(
                "unexpected method '{}' during the handshake",
                m.name()
            ))),
        };
        r.map_err(|e| e.on_method(class_id, method_id))
    }

    fn connection_start(&self) -> ConnectionStart {
        let mut caps = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "consumer_priorities",
        ] {
            caps.insert(cap, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert("capabilities", FieldValue::Table(caps));
        props.insert("product", FieldValue::LongStr(LongStr::from("Mailroom")));
        props.insert(
            "version",
            FieldValue::LongStr(LongStr::from(env!("CARGO_PKG_VERSION"))),
        );
        props.insert("platform", FieldValue::LongStr(LongStr::from("Rust")));
        props.insert("cluster_name", FieldValue::LongStr(LongStr::from("mailroom")));
        props.insert(
            "information",
            FieldValue::LongStr(LongStr::from("Mailroom, a store-backed AMQP 0-9-1 broker")),
        );
        props.insert(
            "copyright",
            FieldValue::LongStr(LongStr::from("The Mailroom authors")),
        );
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongStr::from("PLAIN AMQPLAIN"),
            locales: LongStr::from("en_US"),
        }
    }

    fn on_start_ok(&mut self, ok: protocol::ConnectionStartOk) -> AmqpResult<()> {
        if let Some(FieldValue::Table(caps)) = ok.client_properties.get("capabilities") {
            let on = |k: &str| matches!(caps.get(k), Some(FieldValue::Bool(true)));
            self.caps.consumer_cancel_notify = on("consumer_cancel_notify");
            self.caps.connection_blocked = on("connection.blocked");
        }
        let mechanism = ok.mechanism.as_str();
        let (user, pass) = match mechanism {
            "PLAIN" => crate::auth::parse_plain(ok.response.as_bytes()),
            "AMQPLAIN" => crate::auth::parse_amqplain(ok.response.as_bytes()),
            other => {
                return Err(AmqpError::command_invalid(format!("unknown authentication mechanism '{other}'")))
            }
        }
        .ok_or_else(|| {
            AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ))
        })?;
        match self.broker.login(&user, &pass, self.peer.ip()) {
            Ok(u) => self.user = u.name,
            Err(LoginError::BadCredentials) => {
                warn!(peer = %self.peer, user, "login refused: invalid credentials");
                return Err(AmqpError::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                )));
            }
            Err(LoginError::LoopbackOnly) => {
                warn!(peer = %self.peer, user, "login refused: user may only connect via localhost");
                return Err(AmqpError::access_refused(format!(
                    "user '{user}' can only connect via localhost"
                )));
            }
        }
        let cfg = &self.broker.config;
        self.send_method(
            0,
            &Method::ConnectionTune(ConnectionTune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            }),
        );
        self.phase = Phase::AwaitTuneOk;
        Ok(())
    }

    fn on_tune_ok(&mut self, ok: protocol::ConnectionTuneOk) -> AmqpResult<()> {
        let cfg = &self.broker.config;
        let channel_max = if ok.channel_max == 0 {
            cfg.channel_max
        } else {
            ok.channel_max
        };
        if channel_max > cfg.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "negotiated channel_max = {} is higher than the maximum allowed value ({})",
                ok.channel_max, cfg.channel_max
            )));
        }
        if ok.frame_max != 0 && ok.frame_max < protocol::FRAME_MIN_SIZE {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} < {} min size",
                ok.frame_max,
                protocol::FRAME_MIN_SIZE
            )));
        }
        if cfg.frame_max != 0 && (ok.frame_max == 0 || ok.frame_max > cfg.frame_max) {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} > {} max size",
                ok.frame_max, cfg.frame_max
            )));
        }
        self.channel_max = channel_max;
        self.frame_max = ok.frame_max;
        self.pending_frame_max = Some(ok.frame_max);
        self.heartbeat = ok.heartbeat;
        self.phase = Phase::AwaitOpen;
        Ok(())
    }

    fn on_open(&mut self, open: protocol::ConnectionOpen) -> AmqpResult<()> {
        let name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(name) else {
            return Err(AmqpError::not_allowed(format!("vhost {name} not found")));
        };
        self.vhost = Some(vhost);
        self.send_method(0, &Method::ConnectionOpenOk(protocol::ConnectionOpenOk));
        self.phase = Phase::Open;
        debug!(peer = %self.peer, user = self.user, vhost = name, "connection open");
        Ok(())
    }

    fn on_connection_method(&mut self, m: Method) -> AmqpResult<()> {
        let (class_id, method_id) = (m.class_id(), m.method_id());
        match m {
            Method::ConnectionClose(_) => {
                self.send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                self.phase = Phase::Closed;
                Ok(())
            }
            Method::ConnectionCloseOk(_) => {
                self.phase = Phase::Closed;
                Ok(())
            }
            Method::ConnectionUpdateSecret(_) => {
                self.send_method(
                    0,
                    &Method::ConnectionUpdateSecretOk(protocol::ConnectionUpdateSecretOk),
                );
                Ok(())
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(()),
            // RabbitMQ's last handle_method0 clause.
            _ => Err(AmqpError::channel_error(
                "unexpected method in connection state running",
            )),
        }
        .map_err(|e| e.on_method(class_id, method_id))
    }

    /// Sends connection.close and waits (in the main loop) for close-ok.
    fn start_close(&mut self, err: AmqpError) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        debug!(peer = %self.peer, code = err.code, text = err.text, "closing connection");
        self.send_method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: err.code,
                reply_text: ShortStr::from(truncate_text(&err.text)),
                class_id: err.class_id,
                method_id: err.method_id,
            }),
        );
        self.phase = Phase::Closing;
        self.closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
        self.release_all();
    }

    pub fn send_method(&mut self, channel: u16, m: &Method) {
        protocol::write_method(&mut self.out, channel, m);
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.wr.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > 4 * WRITE_HIGH_WATER {
            self.out = BytesMut::with_capacity(64 * 1024);
        }
        r
    }

    fn on_signal(&mut self) {
        let mut ready = std::mem::take(&mut self.ready_scratch);
        self.signal.take_ready(&mut ready);
        for &id in &ready {
            self.schedule_pull(id);
        }
        self.ready_scratch = ready;
        for ev in self.signal.take_events() {
            match ev {
                ConnEvent::ConsumerCancelled(id, tag) => self.server_cancel(id, tag),
            }
        }
    }

    pub fn schedule_pull(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.get_mut(&id) {
            if !c.scheduled {
                c.scheduled = true;
                self.pull_list.push(id);
            }
        }
    }

    /// Everything this connection holds goes back: unacked messages are requeued, consumers removed,
    /// exclusive queues deleted.
    fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for ch in ids {
            self.release_channel(ch);
        }
        self.channels.clear();
        // No consumers are left, so nothing may stay scheduled for a pull.
        self.pull_list.clear();
    }

    fn cleanup(&mut self) {
        self.release_all();
        if let Some(vhost) = self.vhost.clone() {
            for q in std::mem::take(&mut self.exclusive_queues) {
                vhost.delete_queue(&q);
            }
        }
    }

    pub fn vhost(&self) -> &Arc<VHost> {
        self.vhost.as_ref().expect("connection is open")
    }
}

/// Reply texts are short strings: cut at 255 bytes on a character boundary.
pub fn truncate_text(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
