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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use protocol::{reply, ConnectionClose, Frame, FrameCodec, Method, ShortStr};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::broker::Broker;
use crate::channel::{truncate_text, Channel, Ctx, Next};
use crate::error::{AmqpError, AmqpResult};
use crate::session::Session;
use crate::signal::{ConnEvent, ConnSignal};
use handshake::Login;
use transport::{Phase, Transport};

/// Frames handled per wake-up before the connection writes what it produced.
const FRAMES_PER_ROUND: usize = 512;
/// How long a closed connection keeps reading (and discarding) while it waits for the client's EOF.
const LINGER: Duration = Duration::from_secs(3);

struct Conn {
    broker: Arc<Broker>,
    id: u64,
    transport: Transport,
    /// What the handshake learned (until connection.open makes the session).
    login: Login,
    /// Shared with the queues this connection consumes from, to wake it.
    signal: Arc<ConnSignal>,
    /// From connection.open on.
    session: Option<Session>,
    channels: HashMap<u16, Channel>,
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
        transport: Transport::new(peer, wr),
        login: Login::default(),
        signal: Arc::new(ConnSignal::new()),
        session: None,
        channels: HashMap::new(),
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

async fn drain_until_eof(rd: &mut OwnedReadHalf) {
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
        framed: &mut FramedRead<OwnedReadHalf, FrameCodec>,
        shutdown: CancellationToken,
        handshake_timeout: Duration,
    ) {
        self.transport
            .send_method(0, &Method::ConnectionStart(handshake::connection_start()));
        if self.transport.write_out().await.is_err() {
            return;
        }
        let handshake_deadline = tokio::time::Instant::now() + handshake_timeout;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
        let mut heartbeat_secs = 0u16;
        let mut durable = self.broker.durable_watch();
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
            let closing_deadline = t.closing_deadline;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if phase != Phase::Closing => {
                    self.start_close(AmqpError::new(reply::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'"));
                    self.transport.closing_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                frame = framed.next() => {
                    if !self.on_read(frame) { break; }
                }
                _ = self.signal.notified() => self.on_signal(),
                r = durable.changed(), if awaiting_durable => {
                    if r.is_err() { /* store gone: confirms flushed at shutdown */ }
                }
                _ = heartbeat.tick(), if heartbeat_secs > 0 && phase == Phase::Open => {
                    if self.transport.heartbeat_missed(heartbeat_secs) {
                        info!(peer = %self.transport.peer, "missed heartbeats from client, timeout: {heartbeat_secs}s");
                        break;
                    }
                    self.transport.out.heartbeat();
                }
                _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                    info!(peer = %self.transport.peer, "handshake timeout");
                    break;
                }
                _ = tokio::time::sleep_until(closing_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if closing_deadline.is_some() => { break; }
                _ = std::future::ready(()), if has_pulls => {}
            }
            // Handle whatever else is already buffered before writing.
            let mut eof = false;
            for _ in 0..FRAMES_PER_ROUND {
                if self.transport.phase == Phase::Closed {
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
            if let Some(max) = self.transport.pending_frame_max.take() {
                framed.decoder_mut().set_max_frame_size(max);
            }
            if self.transport.phase == Phase::Open {
                self.run_pulls();
                let durable_now = *durable.borrow_and_update();
                for channel in self.channels.values_mut() {
                    channel.flush_confirms(durable_now, &mut self.transport.out);
                }
            } else if let Some(s) = self.session.as_mut() {
                s.pull_list.clear();
            }
            if self.transport.write_out().await.is_err() || eof || self.transport.phase == Phase::Closed {
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
                debug!(peer = %self.transport.peer, error = %e, "frame error");
                if self.transport.phase != Phase::Closing {
                    self.start_close(AmqpError::from(e));
                }
                // The stream cannot be trusted after a framing error: close once the close frame is out.
                self.transport.phase = Phase::Closed;
                true
            }
            Some(Ok(frame)) => {
                self.transport.last_recv = Instant::now();
                if let Err(e) = self.on_frame(frame) {
                    self.start_close(e);
                }
                true
            }
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
                handshake::on_start_ok(t, &mut self.login, &self.broker, ok)
            }
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(ok)) => handshake::on_tune_ok(t, &self.broker, ok),
            (Phase::AwaitOpen, Method::ConnectionOpen(open)) => {
                handshake::on_open(t, &self.broker, &self.login, open).map(|vhost| {
                    let login = std::mem::take(&mut self.login);
                    self.session = Some(Session::new(
                        self.id,
                        vhost,
                        login.user,
                        login.caps,
                        self.signal.clone(),
                    ));
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
        let Some(channel) = self.channels.get_mut(&ch) else {
            return match frame {
                Frame::Method(_, Method::ChannelOpen(_)) => {
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
            self.channels.remove(&ch);
        }
        Ok(())
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
            if let Some(channel) = self.channels.get_mut(&reply.channel) {
                channel.deliver_reply(reply, &mut self.transport.out);
            }
        }
        for ev in self.signal.take_events() {
            match ev {
                ConnEvent::ConsumerCancelled(id, tag) => {
                    let Some(c) = s.forget_consumer(id) else { continue };
                    if let Some(channel) = self.channels.get_mut(&c.channel) {
                        channel.cancelled_by_server(
                            tag,
                            s.caps.consumer_cancel_notify,
                            &mut self.transport.out,
                        );
                    }
                }
            }
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
            let channel = session
                .consumers
                .get(&id)
                .and_then(|c| self.channels.get_mut(&c.channel));
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
        }
        session.pull_list.drain(..i);
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

impl Drop for Conn {
    /// However the task ends (returned, failed, panicked), nothing the connection registered stays behind.
    fn drop(&mut self) {
        self.release_all();
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
