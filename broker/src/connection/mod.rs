//! One client connection: one task. It reads frames, runs the methods of its channels, pulls deliveries for
//! its consumers from their queues, and writes everything it produced in one go before waiting again, so a
//! burst of deliveries and confirms leaves in few socket writes. No lock is held across an `.await`.
//!
//! A connection is three parts:
//! - the [`Transport`](transport::Transport) (`transport.rs`): socket, output buffer, frame_max, handshake
//!   phase, heartbeats, closing deadline;
//! - the [`Session`] (`session.rs`, from connection.open on): the context its channels share (vhost, user,
//!   capabilities, consumers, pull list, exclusive queues, scratch buffers, id);
//! - its [`Channel`]s, values with behaviour: a frame for channel N is handed to `channels[N].handle(frame,
//!   ctx)` after one lookup.
//!
//! The connection class (handshake, close) is in `handshake.rs`. Everything a connection registers is
//! released by `Drop for Conn`, so an early return, an error path or a panic in the task still requeues its
//! unacked messages, cancels its consumers and deletes its exclusive queues.

mod handshake;
mod transport;

use std::collections::VecDeque;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use protocol::{reply, ConnectionClose, Frame, FrameCodec, Method, ShortStr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::broker::Broker;
use crate::channel::{truncate_text, Channel, ChannelTable, Ctx, Next, BACKLOG_MAX};
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::flow::AlarmState;
use crate::session::Session;
use crate::signal::{ConnEvent, ConnSignal};
use crate::tls::PeerTls;
use handshake::Login;
use transport::{Phase, Transport};

/// Frames handled per wake-up before the connection writes what it produced.
const FRAMES_PER_ROUND: usize = 512;
/// While a connection is paused by flow control it still reads, into a stash, up to this many bytes of
/// frames: enough to see heartbeats and a connection.close from a client that stopped publishing when it
/// was blocked; past it, the socket is not read at all and TCP pushes back on the client.
const STASH_MAX: usize = 256 * 1024;
/// Throttling is logged at most this often per connection.
const THROTTLE_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a closed connection keeps reading (and discarding) while it waits for the client's EOF.
const LINGER: Duration = Duration::from_secs(3);
/// How often the consumer acknowledgement timeout is checked (RabbitMQ checks on its channel tick).
const ACK_TIMEOUT_CHECK: Duration = Duration::from_secs(1);

/// Generic over the socket's write half: plain TCP pays for no indirection, AMQPS writes through TLS.
struct Conn<W: AsyncWrite + Unpin> {
    broker: Arc<Broker>,
    id: u64,
    /// The address the client connected to (for the management API's connection name).
    local: SocketAddr,
    transport: Transport<W>,
    /// What the handshake learned (until connection.open makes the session).
    login: Login,
    /// Shared with the queues this connection consumes from, to wake it.
    signal: Arc<ConnSignal>,
    /// From connection.open on.
    session: Option<Session>,
    /// Looked up on every frame: an index by channel number (`channel/table.rs`).
    channels: ChannelTable,
    /// Counted against --max-connections (from connection.open on).
    counted: bool,
    /// Flow control: frames read while paused, handled in order once it resumes.
    stash: VecDeque<Frame>,
    stash_bytes: usize,
    /// The alarms in force (from the broker's monitor).
    alarm: AlarmState,
    /// Blocked by an alarm since (a connection that has published, while an alarm is set).
    blocked_at: Option<Instant>,
    /// connection.blocked was sent (unblocked is owed).
    blocked_sent: bool,
    /// Throttled by a queue over its flow bound since.
    throttled_at: Option<Instant>,
    throttle_logged_at: Option<Instant>,
    /// Publishes and body bytes handled in this wake-up (the per-connection publish budget).
    round_publishes: u32,
    round_bytes: u64,
}

/// Serves one accepted socket until it closes.
pub async fn serve(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer);
    let (rd, wr) = socket.into_split();
    serve_stream(broker, rd, wr, peer, local, None, shutdown).await;
}

/// Serves one socket accepted on an AMQPS listener: the TLS handshake (within the handshake timeout; a
/// client that does not speak TLS, such as a plain AMQP client, is closed), then AMQP over it.
pub async fn serve_tls(
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer);
    let stream = match tokio::time::timeout(broker.config.handshake_timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed: connection closed");
            return;
        }
        Err(_) => {
            info!(%peer, "no TLS handshake before the handshake timeout: connection closed");
            return;
        }
    };
    let tls = PeerTls::from_connection(stream.get_ref().1);
    debug!(%peer, client_cert = tls.has_cert, cn = ?tls.cert_cn, "TLS handshake done");
    let (rd, wr) = tokio::io::split(stream);
    serve_stream(broker, rd, wr, peer, local, Some(tls), shutdown).await;
}

async fn serve_stream<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<PeerTls>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let id = broker.next_connection_id();
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
        local,
        transport: Transport::new(peer, wr),
        login: Login {
            tls,
            ..Login::default()
        },
        signal: Arc::new(ConnSignal::new()),
        session: None,
        channels: ChannelTable::new(),
        counted: false,
        stash: VecDeque::new(),
        stash_bytes: 0,
        alarm: AlarmState::default(),
        blocked_at: None,
        blocked_sent: false,
        throttled_at: None,
        throttle_logged_at: None,
        round_publishes: 0,
        round_bytes: 0,
    };
    if header != protocol::PROTOCOL_HEADER {
        debug!(%peer, ?header, "bad protocol header");
        let _ = conn.transport.write_raw(&protocol::PROTOCOL_HEADER).await;
        conn.transport.shutdown().await;
        return;
    }
    let mut framed = FramedRead::with_capacity(rd, FrameCodec::new(), 64 * 1024);
    conn.run(&mut framed, shutdown, handshake_timeout).await;
    conn.release_all();
    // As RabbitMQ does: shut our write side down (the client sees close-ok, then a clean EOF), and read and
    // discard until the client closes too, for a few seconds at most. Closing with the client's bytes still
    // unread would make the kernel reset the connection, and the client would get ECONNRESET instead of
    // close-ok.
    conn.transport.shutdown().await;
    drain_until_eof(framed.get_mut()).await;
    debug!(%peer, id, "connection closed");
}

async fn drain_until_eof<R: AsyncRead + Unpin>(rd: &mut R) {
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

impl<W: AsyncWrite + Unpin> Conn<W> {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        framed: &mut FramedRead<R, FrameCodec>,
        shutdown: CancellationToken,
        handshake_timeout: Duration,
    ) {
        self.transport.send_method(
            0,
            &Method::ConnectionStart(handshake::connection_start(&self.login)),
        );
        if self.transport.write_out().await.is_err() {
            return;
        }
        let handshake_deadline = tokio::time::Instant::now() + handshake_timeout;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        let mut heartbeat_secs = 0u16;
        // The consumer acknowledgement timeout is checked about once a second while a channel holds
        // deliveries it applies to (channel/ack_timeout.rs).
        let mut ack_timer = tokio::time::interval(ACK_TIMEOUT_CHECK);
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut durable = self.broker.durable_watch();
        let mut alarms = self.broker.flow.subscribe();
        self.alarm = *alarms.borrow_and_update();
        let (budget, budget_bytes, yield_after_write) = (
            self.broker.config.publish_budget,
            self.broker.config.publish_budget_bytes,
            self.broker.config.yield_after_write,
        );
        loop {
            let t = &self.transport;
            if heartbeat_secs != t.heartbeat && t.heartbeat > 0 {
                heartbeat_secs = t.heartbeat;
                let half = Duration::from_millis(t.heartbeat as u64 * 500);
                heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
            }
            // Pull work exists only while open (a closing connection has released its consumers), so this
            // branch is never ready without the pass below making progress.
            let has_pulls =
                t.phase == Phase::Open && self.session.as_ref().is_some_and(|s| !s.pull_list.is_empty());
            let handshaking = t.phase.is_handshake();
            let phase = t.phase;
            let awaiting_durable = self.channels.values().any(Channel::awaiting_durable);
            // A channel whose reply waits for the store keeps the frames that arrive for it; past a bound,
            // stop reading until it is settled.
            let backlog_ok = !self.channels.values().any(|c| c.backlog_len() >= BACKLOG_MAX);
            let closing_deadline = t.closing_deadline;
            let reading = backlog_ok && self.may_read();
            let watch_acks = phase == Phase::Open && self.channels.values().any(Channel::watches_ack_timeout);
            // One clock reading per wake-up for what the frames of this round need (`Session::now_ms`).
            if let Some(s) = self.session.as_mut() {
                s.clock_tick();
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if phase != Phase::Closing => {
                    self.start_close(AmqpError::new(reply::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'"));
                    self.transport.closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                // Delivery before intake: wake-ups from queues, confirms and alarms come before new frames.
                _ = self.signal.notified() => self.on_signal(),
                r = durable.changed(), if awaiting_durable => {
                    if r.is_err() { /* store gone: confirms flushed at shutdown */ }
                }
                r = alarms.changed() => {
                    if r.is_ok() {
                        self.alarm = *alarms.borrow_and_update();
                        self.update_alarm_block();
                    }
                }
                frame = framed.next(), if reading => {
                    if !self.on_read(frame) { break; }
                }
                _ = heartbeat.tick(), if heartbeat_secs > 0 && phase == Phase::Open => {
                    if !self.may_read() {
                        // Not reading the socket (flow control): the client's heartbeats wait in it, as
                        // RabbitMQ pauses its heartbeat monitor while a connection is blocked.
                        self.transport.last_recv = Instant::now();
                    }
                    if self.transport.heartbeat_missed(heartbeat_secs) {
                        info!(peer = %self.transport.peer, "missed heartbeats from client, timeout: {heartbeat_secs}s");
                        break;
                    }
                    self.transport.out.heartbeat();
                }
                _ = ack_timer.tick(), if watch_acks => self.check_ack_timeouts(),
                _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                    info!(peer = %self.transport.peer, "handshake timeout");
                    break;
                }
                _ = tokio::time::sleep_until(closing_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if closing_deadline.is_some() => { break; }
                _ = std::future::ready(()), if has_pulls => {}
            }
            // Delivery before intake: deliveries the consumers have credit for go into the buffer first.
            if self.transport.phase == Phase::Open {
                self.run_pulls();
            }
            // Frames stashed while paused, once flow control lets the connection go on.
            self.drain_stash(false);
            // Handle whatever else is already buffered before writing, within the publish budget.
            let mut eof = false;
            self.round_publishes = 0;
            self.round_bytes = 0;
            for _ in 0..FRAMES_PER_ROUND {
                if self.transport.phase == Phase::Closed
                    || !backlog_ok
                    || !self.may_read()
                    || self.round_publishes >= budget
                    || self.round_bytes >= budget_bytes
                {
                    break;
                }
                // A frame already in the read buffer is decoded straight from it (no pass through the
                // stream's state machine and its `Poll<Option<Result<..>>>` per frame); only when none is
                // complete does the stream get polled, which reads the socket if it is ready.
                // (The codec is two integers and keeps no state between frames: a copy decodes the same.)
                let next = match framed.decoder().clone().decode(framed.read_buffer_mut()) {
                    Ok(Some(frame)) => {
                        self.on_frame_read(frame);
                        continue;
                    }
                    Err(e) => Some(Some(Err(e))),
                    Ok(None) => framed.next().now_or_never(),
                };
                match next {
                    Some(frame) => {
                        if !self.on_read(frame) {
                            eof = true;
                            break;
                        }
                    }
                    None => break,
                }
            }
            if let Some(max) = self.transport.pending_frame_max.take() {
                framed.decoder_mut().set_max_frame_size(max);
            }
            if self.transport.phase == Phase::Open {
                let durable_now = durable.borrow_and_update().clone();
                while self.settle_held(&durable_now) {}
                self.settle_acked_runs();
                self.run_pulls();
                let mut confirmed = 0;
                for channel in self.channels.values_mut() {
                    confirmed += channel.flush_confirms(&durable_now, &mut self.transport.out);
                }
                if let Some(s) = self.session.as_ref() {
                    let stats = &s.stats;
                    crate::stats::MessageCounters::add(&stats.messages.confirmed, confirmed);
                    stats
                        .channels
                        .store(self.channels.len() as u64, Ordering::Relaxed);
                    stats.publishing.store(s.published as u64, Ordering::Relaxed);
                }
            } else if let Some(s) = self.session.as_mut() {
                s.pull_list.clear();
            }
            let window_closed = self
                .session
                .as_mut()
                .is_some_and(|s| std::mem::take(&mut s.window_closed));
            if self.transport.write_out().await.is_err() || eof || self.transport.phase == Phase::Closed {
                break;
            }
            // The write filled a consumer's prefetch window: nothing more goes to it until its client has
            // read the deliveries and acked. Where the client shares the broker's cores and waits for one
            // (the write woke it), let it run now rather than after this worker's next tasks, so that the
            // acks, and the next window, come back sooner (docs/decisions.md; docs/performance.md "Hot
            // path: session 19"). With nothing waiting for the core this returns at once.
            if window_closed && yield_after_write {
                std::thread::yield_now();
            }
            // Tokio's cooperative budget: even if some branch above were always ready, the task yields
            // after a bounded amount of work, so one connection can never keep a worker from the others.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// Closes the channels holding a delivery unacknowledged past its timeout (406, unacked requeued).
    fn check_ack_timeouts(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let now = now_ms();
        for channel in self.channels.values_mut() {
            let mut ctx = Ctx {
                session,
                out: &mut self.transport.out,
            };
            if channel.check_ack_timeout(now, &mut ctx) {
                self.broker
                    .flow
                    .counters
                    .consumer_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Handles one read result. Returns false when the socket is finished.
    fn on_read(&mut self, frame: Option<Result<Frame, protocol::ProtocolError>>) -> bool {
        match frame {
            None => false,
            Some(Err(e)) => {
                debug!(peer = %self.transport.peer, error = %e, "frame error");
                if self.transport.phase != Phase::Closing {
                    self.start_close(AmqpError::from(e));
                }
                // The stream cannot be trusted after a framing error: close once the close frame is out.
                self.transport.phase = Phase::Closed;
                true
            }
            Some(Ok(frame)) => {
                self.on_frame_read(frame);
                true
            }
        }
    }

    /// Handles one frame read from the socket (or stashes it while flow control pauses the connection).
    /// Inlined, as are `handle_frame`, `Channel::handle` and `Channel::handle_now`: a `Frame` is 128 bytes,
    /// and each call taking it by value copied it (S1's shape: 5,849 -> 5,600 instructions a message).
    #[inline(always)]
    fn on_frame_read(&mut self, frame: Frame) {
        // not a clock read per frame: the heartbeat check reads the clock (`heartbeat_missed`)
        self.transport.received = true;
        match &frame {
            Frame::Method(_, Method::BasicPublish(_)) => self.round_publishes += 1,
            Frame::Body(_, b) => self.round_bytes += b.len() as u64,
            _ => {}
        }
        if self.transport.phase == Phase::Open && (self.paused() || !self.stash.is_empty()) {
            self.stash_frame(frame);
        } else {
            self.handle_frame(frame);
        }
    }

    /// One frame through the connection, then what flow control learned from it.
    #[inline(always)]
    fn handle_frame(&mut self, frame: Frame) {
        if let Err(e) = self.on_frame(frame) {
            self.start_close(e);
        }
        let Some(s) = self.session.as_ref() else { return };
        if s.flow_dirty {
            self.refresh_flow();
        }
        if self.alarm.any() && self.blocked_at.is_none() {
            self.update_alarm_block();
        }
    }

    /// Paused by flow control: a queue it published to is over its bound, or an alarm blocks it.
    fn paused(&self) -> bool {
        self.blocked_at.is_some() || self.throttled_at.is_some()
    }

    /// Whether the socket may be read now: always, unless paused with a full stash.
    fn may_read(&self) -> bool {
        self.transport.phase != Phase::Open || !self.paused() || self.stash_bytes < STASH_MAX
    }

    /// A frame read while paused: heartbeats only count as traffic; connection.close and channel.close are
    /// handled at once (after the frames before them, which the stash bounds), so a throttled client can
    /// close cleanly; the rest waits in order.
    fn stash_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Heartbeat(0) => {}
            Frame::Method(0, Method::ConnectionClose(_)) | Frame::Method(_, Method::ChannelClose(_)) => {
                self.drain_stash(true);
                self.handle_frame(frame);
            }
            f => {
                self.stash_bytes += frame_size(&f);
                self.stash.push_back(f);
            }
        }
    }

    /// Handles stashed frames while not paused (or all of them, with `force`).
    fn drain_stash(&mut self, force: bool) {
        while force || !self.paused() {
            let Some(f) = self.stash.pop_front() else { break };
            self.stash_bytes -= frame_size(&f);
            if matches!(self.transport.phase, Phase::Closing | Phase::Closed) {
                continue;
            }
            self.handle_frame(f);
        }
    }

    /// Registers with every queue that throttles this connection (or forgets those under their low-water
    /// mark again), and starts or ends the throttle.
    fn refresh_flow(&mut self) {
        let Some(s) = self.session.as_mut() else { return };
        s.flow_dirty = false;
        let signal = &self.signal;
        s.flow_queues.retain(|q| q.flow_wait(signal));
        let throttled = !s.flow_queues.is_empty();
        let counters = &self.broker.flow.counters;
        match (throttled, self.throttled_at) {
            (true, None) => {
                crate::stats::THROTTLED_NOW.fetch_add(1, Ordering::Relaxed);
                self.throttled_at = Some(Instant::now());
                counters.queue_throttles.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if self
                    .throttle_logged_at
                    .is_none_or(|t| now - t >= THROTTLE_LOG_EVERY)
                {
                    self.throttle_logged_at = Some(now);
                    let queues: Vec<&str> = s.flow_queues.iter().map(|q| &**q.name()).collect();
                    info!(peer = %self.transport.peer, ?queues,
                        "connection throttled: publishing to queues over their flow bound (logged once per 10 s)");
                }
            }
            (false, Some(at)) => {
                crate::stats::THROTTLED_NOW.fetch_sub(1, Ordering::Relaxed);
                self.throttled_at = None;
                counters
                    .queue_throttled_ms
                    .fetch_add(at.elapsed().as_millis() as u64, Ordering::Relaxed);
                self.transport.last_recv = Instant::now();
            }
            _ => {}
        }
    }

    /// Blocks a connection that has published while an alarm is set (connection.blocked to clients that
    /// asked for it), and unblocks it when the alarms clear (connection.unblocked).
    fn update_alarm_block(&mut self) {
        let Some(s) = self.session.as_ref() else { return };
        if self.transport.phase != Phase::Open {
            return;
        }
        let block = self.alarm.any() && s.published;
        let counters = &self.broker.flow.counters;
        match (block, self.blocked_at) {
            (true, None) => {
                crate::stats::BLOCKED_NOW.fetch_add(1, Ordering::Relaxed);
                self.blocked_at = Some(Instant::now());
                counters.alarm_blocks.fetch_add(1, Ordering::Relaxed);
                let reason = self.alarm.reason();
                debug!(peer = %self.transport.peer, reason, "connection blocked by a resource alarm");
                if s.caps.connection_blocked {
                    self.transport.send_method(
                        0,
                        &Method::ConnectionBlocked(protocol::ConnectionBlocked {
                            reason: ShortStr::from(reason),
                        }),
                    );
                    self.blocked_sent = true;
                }
            }
            (false, Some(at)) => {
                crate::stats::BLOCKED_NOW.fetch_sub(1, Ordering::Relaxed);
                self.blocked_at = None;
                counters
                    .alarm_blocked_ms
                    .fetch_add(at.elapsed().as_millis() as u64, Ordering::Relaxed);
                debug!(peer = %self.transport.peer, "connection unblocked");
                if std::mem::take(&mut self.blocked_sent) {
                    self.transport
                        .send_method(0, &Method::ConnectionUnblocked(protocol::ConnectionUnblocked));
                }
                self.transport.last_recv = Instant::now();
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, frame: Frame) -> AmqpResult<()> {
        match self.transport.phase {
            Phase::Closed => Ok(()),
            Phase::Closing => {
                // Only close and close-ok matter now.
                if let Frame::Method(0, m) = frame {
                    match m {
                        Method::ConnectionCloseOk(_) => self.transport.phase = Phase::Closed,
                        Method::ConnectionClose(_) => {
                            self.transport
                                .send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                            self.transport.phase = Phase::Closed;
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Phase::AwaitStartOk | Phase::AwaitTuneOk | Phase::AwaitOpen => self.on_handshake_frame(frame),
            Phase::Open => {
                #[cfg(debug_assertions)]
                test_hooks::maybe_panic(&frame);
                match frame {
                    Frame::Heartbeat(0) => Ok(()),
                    Frame::Heartbeat(_) => {
                        Err(AmqpError::unexpected_frame("heartbeat frame on non-zero channel"))
                    }
                    Frame::Method(0, m) => handshake::on_connection_method(&mut self.transport, m),
                    Frame::Header(0, _) | Frame::Body(0, _) => {
                        Err(AmqpError::unexpected_frame("content frame on channel 0"))
                    }
                    f @ (Frame::Method(ch, _) | Frame::Header(ch, _) | Frame::Body(ch, _)) => {
                        self.on_channel_frame(ch, f)
                    }
                }
            }
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
        let t = &mut self.transport;
        let r = match (t.phase, m) {
            (_, Method::ConnectionClose(_)) => {
                t.send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                t.phase = Phase::Closed;
                Ok(())
            }
            (Phase::AwaitStartOk, Method::ConnectionStartOk(ok)) => {
                handshake::on_start_ok(t, &mut self.login, &self.broker, *ok)
            }
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(ok)) => handshake::on_tune_ok(t, &self.broker, ok),
            (Phase::AwaitOpen, Method::ConnectionOpen(open)) => {
                handshake::on_open(t, &self.broker, &self.login, open).map(|vhost| {
                    let login = std::mem::take(&mut self.login);
                    let name = format!("{} -> {}", t.peer, self.local);
                    self.broker.conns.register(crate::conns::ConnInfo {
                        id: self.id,
                        name: name.clone(),
                        peer: t.peer,
                        local: self.local,
                        user: login.user.clone(),
                        vhost: vhost.name.to_string(),
                        connected_at_ms: crate::clock::now_ms(),
                        client_properties: login.client_properties,
                        frame_max: t.out.frame_max(),
                        channel_max: t.channel_max,
                        heartbeat: t.heartbeat,
                        auth_mechanism: login.mechanism,
                        signal: self.signal.clone(),
                    });
                    let mut session = Session::new(
                        self.id,
                        vhost,
                        login.user,
                        login.caps,
                        self.signal.clone(),
                        self.broker.config.max_message_size,
                    );
                    session.access = crate::users::Access::new(self.broker.users.clone(), &session.user);
                    session.consumer_timeout =
                        self.broker.config.consumer_timeout.map(|d| d.as_millis() as u64);
                    session.flow = Some(self.broker.flow.clone());
                    session.conn_name = name.into();
                    session.trace_source = Arc::new(crate::trace::Source {
                        vhost: session.vhost.name.clone(),
                        connection: Some(session.conn_name.clone()),
                        user: Some(session.user.as_str().into()),
                    });
                    self.session = Some(session);
                    self.counted = true;
                    if let Some(s) = self.session.as_ref() {
                        self.broker.stats.register(self.id, s.stats.clone());
                    }
                })
            }
            (_, m) => Err(AmqpError::command_invalid(format!(
                "unexpected method '{}' during the handshake",
                m.name()
            ))),
        };
        r.map_err(|e| e.on_method(class_id, method_id))
    }

    /// A frame for channel `ch`: opens the channel, or hands the frame to it.
    fn on_channel_frame(&mut self, ch: u16, frame: Frame) -> AmqpResult<()> {
        if ch > self.transport.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "channel number {ch} is higher than the negotiated channel_max ({})",
                self.transport.channel_max
            )));
        }
        let Some(session) = self.session.as_mut() else {
            return Err(AmqpError::internal("channel frame before connection.open"));
        };
        let Some(channel) = self.channels.get_mut(ch) else {
            return match frame {
                Frame::Method(_, Method::ChannelOpen(_)) => {
                    crate::stats::CHANNELS_OPENED.fetch_add(1, Ordering::Relaxed);
                    self.channels
                        .insert(ch, Channel::open(ch, &mut self.transport.out));
                    Ok(())
                }
                Frame::Method(_, m) => Err(AmqpError::channel_error("expected 'channel.open'")
                    .on_method(m.class_id(), m.method_id())),
                _ => Err(AmqpError::channel_error("expected 'channel.open'")),
            };
        };
        let mut ctx = Ctx {
            session,
            out: &mut self.transport.out,
        };
        if channel.handle(frame, &mut ctx)? == Next::Remove {
            self.channels.remove(ch);
        }
        Ok(())
    }

    /// Replies held for durability whose tickets are settled go out (or fail the connection), and the frames
    /// that waited behind them are handled. Returns whether a reply was released (the frames handled may
    /// hold another reply that is settled already).
    fn settle_held(&mut self, d: &storage::Durability) -> bool {
        let Conn {
            session,
            channels,
            transport,
            ..
        } = self;
        let Some(session) = session.as_mut() else {
            return false;
        };
        let mut err = None;
        let mut released = false;
        channels.retain(|_, channel| {
            if err.is_some() || !channel.held_settled(d) {
                return true;
            }
            released = true;
            let mut ctx = Ctx {
                session,
                out: &mut transport.out,
            };
            match channel.settle_held(d, &mut ctx) {
                Ok(next) => next == Next::Keep,
                Err(e) => {
                    err = Some(e);
                    true
                }
            }
        });
        if let Some(e) = err {
            self.start_close(e);
            return false;
        }
        released
    }

    /// Sends connection.close and waits (in the main loop) for close-ok. The channels are released now.
    fn start_close(&mut self, err: AmqpError) {
        if matches!(self.transport.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        debug!(peer = %self.transport.peer, code = err.code, text = err.text, "closing connection");
        self.transport.send_method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: err.code,
                reply_text: ShortStr::from(truncate_text(&err.text)),
                class_id: err.class_id,
                method_id: err.method_id,
            }),
        );
        self.transport.phase = Phase::Closing;
        self.transport.closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
        self.stash.clear();
        self.stash_bytes = 0;
        self.release_channels();
    }

    /// Consumers the queues woke, and consumers whose queue was deleted.
    fn on_signal(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut ready = std::mem::take(&mut s.ready_scratch);
        self.signal.take_ready(&mut ready);
        for &id in &ready {
            s.schedule_pull(id);
        }
        s.ready_scratch = ready;
        // Direct replies for our channels (a channel gone meanwhile drops them).
        let mut replies = Vec::new();
        self.signal.take_replies(&mut replies);
        for reply in replies {
            if let Some(channel) = self.channels.get_mut(reply.channel) {
                channel.deliver_reply(reply, &mut self.transport.out);
            }
        }
        if self.signal.take_flow() {
            self.refresh_flow();
        }
        let mut close = None;
        for ev in self.signal.take_events() {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            match ev {
                ConnEvent::ForceClose(reason) => close = Some(reason),
                ConnEvent::Snapshot(tx) => {
                    let mut channels: Vec<_> = self.channels.values().map(|c| c.snapshot(s)).collect();
                    channels.sort_by_key(|c| c.number);
                    let _ = tx.send(crate::conns::ConnSnapshot {
                        channels,
                        consumers: crate::channel::consumer_snapshots(s),
                    });
                }
                ConnEvent::ConsumerCancelled(id, tag) => {
                    let Some(c) = s.forget_consumer(id) else { continue };
                    if let Some(channel) = self.channels.get_mut(c.channel) {
                        channel.cancelled_by_server(
                            tag,
                            s.caps.consumer_cancel_notify,
                            &mut self.transport.out,
                        );
                    }
                }
            }
        }
        if let Some(reason) = close {
            info!(peer = %self.transport.peer, reason, "connection closed by an operator");
            self.start_close(AmqpError::new(reply::CONNECTION_FORCED, reason));
        }
    }

    /// Pulls deliveries for every scheduled consumer until the write buffer is full enough.
    fn run_pulls(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut i = 0;
        while i < session.pull_list.len() {
            if self.transport.out.is_full() {
                break;
            }
            let id = session.pull_list[i];
            i += 1;
            let (channel, stream) = match session.consumers.get(&id) {
                Some(c) => (self.channels.get_mut(c.channel), c.queue.stream().is_some()),
                None => (None, false),
            };
            let again = match channel {
                Some(channel) => channel.deliver(
                    id,
                    &mut Ctx {
                        session,
                        out: &mut self.transport.out,
                    },
                ),
                None => false,
            };
            if again {
                // A full batch: there may be more. Keep it scheduled for the next round.
                session.pull_list.push(id);
            } else if let Some(c) = session.consumers.get_mut(&id) {
                c.scheduled = false;
            }
            // A classic queue's batch is about one write: out with it before building the next, so that
            // the client starts on it (`output::WRITE_QUANTUM`). A stream's reader goes on to the high water.
            if !stream && self.transport.out.has_quantum() {
                break;
            }
        }
        session.pull_list.drain(..i);
    }

    /// The single acks the channels took this round are settled (credit back before the pulls).
    fn settle_acked_runs(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if !std::mem::take(&mut session.acks_deferred) {
            return;
        }
        for channel in self.channels.values_mut() {
            channel.settle_acked_run(session);
        }
    }

    /// Every channel's unacked messages are requeued and its consumers cancelled.
    fn release_channels(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        crate::channel::release_channels(&mut self.channels, session);
        // No consumers are left, so nothing may stay scheduled for a pull.
        session.release_consumers();
    }

    /// Everything this connection holds goes back: unacked messages are requeued, consumers removed,
    /// exclusive queues deleted. Idempotent.
    fn release_all(&mut self) {
        self.release_channels();
        if let Some(session) = self.session.as_mut() {
            session.delete_exclusive_queues();
        }
    }
}

impl<W: AsyncWrite + Unpin> Drop for Conn<W> {
    /// However the task ends (returned, failed, panicked), nothing the connection registered stays behind.
    fn drop(&mut self) {
        self.release_all();
        if self.throttled_at.take().is_some() {
            crate::stats::THROTTLED_NOW.fetch_sub(1, Ordering::Relaxed);
        }
        if self.blocked_at.take().is_some() {
            crate::stats::BLOCKED_NOW.fetch_sub(1, Ordering::Relaxed);
        }
        if std::mem::take(&mut self.counted) {
            self.broker.connection_closed();
            self.broker.conns.unregister(self.id);
            self.broker.stats.unregister(self.id);
        }
    }
}

/// What a stashed frame costs, roughly: its payload (a method frame counts as a small one).
fn frame_size(f: &Frame) -> usize {
    match f {
        Frame::Body(_, b) => b.len() + 8,
        _ => 64,
    }
}

/// Test-only fault injection, compiled into debug builds only (a release build has no trace of it):
/// `MAILROOM_TEST_PANIC_ON_QUEUE=NAME` makes a connection's task panic when it receives a `queue.declare`
/// for the queue NAME, so tests can show that a panicking connection still releases what it held.
#[cfg(debug_assertions)]
mod test_hooks {
    use std::sync::OnceLock;

    use protocol::{Frame, Method};

    pub fn maybe_panic(frame: &Frame) {
        static QUEUE: OnceLock<Option<String>> = OnceLock::new();
        let Some(name) = QUEUE.get_or_init(|| std::env::var("MAILROOM_TEST_PANIC_ON_QUEUE").ok()) else {
            return;
        };
        if let Frame::Method(_, Method::QueueDeclare(d)) = frame {
            if d.queue.as_str() == name {
                tracing::warn!(queue = name, "test hook: this connection's task panics now");
                panic!("test hook: connection task panic on queue.declare '{name}'");
            }
        }
    }
}
