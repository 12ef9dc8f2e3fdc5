//! The connection class: the handshake (connection.start / start-ok, tune / tune-ok, open / open-ok, SASL in
//! `auth.rs`) and the connection methods of an open connection (close, close-ok, update-secret, blocked).
//! Works on the transport and the handshake's own state; the session is created at connection.open.

use std::sync::Arc;

use protocol::{ConnectionStart, ConnectionTune, FieldTable, FieldValue, LongStr, Method};
use tracing::{debug, info, warn};

use super::transport::{Phase, Transport};
use crate::broker::{Broker, LoginError};
use crate::error::{AmqpError, AmqpResult};
use crate::session::ClientCaps;
use crate::tls::PeerTls;
use crate::vhost::VHost;

/// What the handshake learns before connection.open.
#[derive(Default)]
pub(super) struct Login {
    pub user: String,
    pub caps: ClientCaps,
    /// For the management API's connection list.
    pub client_properties: FieldTable,
    pub mechanism: String,
    /// What the TLS handshake told (AMQPS only): a client certificate makes `EXTERNAL` available.
    pub tls: Option<PeerTls>,
}

impl Login {
    /// `EXTERNAL` is offered only to a client that presented a certificate (rabbit_auth_mechanism_ssl's
    /// `should_offer`).
    fn offers_external(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.has_cert)
    }
}

pub(super) fn connection_start(login: &Login) -> ConnectionStart {
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
        mechanisms: LongStr::from(if login.offers_external() {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        }),
        locales: LongStr::from("en_US"),
    }
}

pub(super) fn on_start_ok<W>(
    t: &mut Transport<W>,
    login: &mut Login,
    broker: &Broker,
    ok: protocol::ConnectionStartOk,
) -> AmqpResult<()> {
    if let Some(FieldValue::Table(caps)) = ok.client_properties.get("capabilities") {
        let on = |k: &str| matches!(caps.get(k), Some(FieldValue::Bool(true)));
        login.caps.consumer_cancel_notify = on("consumer_cancel_notify");
        login.caps.connection_blocked = on("connection.blocked");
    }
    login.client_properties = ok.client_properties.clone();
    let mechanism = ok.mechanism.as_str();
    login.mechanism = mechanism.to_string();
    let refused = || {
        AmqpError::access_refused(format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        ))
    };
    let result = match mechanism {
        "PLAIN" | "AMQPLAIN" => {
            let parsed = if mechanism == "PLAIN" {
                crate::auth::parse_plain(ok.response.as_bytes())
            } else {
                crate::auth::parse_amqplain(ok.response.as_bytes())
            };
            let (user, pass) = parsed.ok_or_else(refused)?;
            broker.login(&user, &pass, t.peer.ip()).map_err(|e| (user, e))
        }
        // rabbit_auth_mechanism_ssl: the response is ignored, the user is the certificate's CN.
        "EXTERNAL" if login.offers_external() => {
            let Some(cn) = login.tls.as_ref().and_then(|t| t.cert_cn.clone()) else {
                warn!(peer = %t.peer, "EXTERNAL login refused: the client certificate has no CN");
                return Err(refused());
            };
            broker.login_external(&cn, t.peer.ip()).map_err(|e| (cn, e))
        }
        // rabbit_reader:auth_mechanism_to_module.
        "EXTERNAL" => {
            return Err(AmqpError::command_invalid(format!(
                "invalid authentication mechanism '{mechanism}'"
            )))
        }
        other => {
            return Err(AmqpError::command_invalid(format!(
                "unknown authentication mechanism '{other}'"
            )))
        }
    };
    match result {
        Ok(u) => login.user = u.name,
        Err((user, LoginError::BadCredentials)) => {
            warn!(peer = %t.peer, user, "login refused: invalid credentials");
            return Err(AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            )));
        }
        Err((user, LoginError::LoopbackOnly)) => {
            warn!(peer = %t.peer, user, "login refused: user may only connect via localhost");
            return Err(AmqpError::access_refused(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
    }
    let cfg = &broker.config;
    t.send_method(
        0,
        &Method::ConnectionTune(ConnectionTune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat,
        }),
    );
    t.phase = Phase::AwaitTuneOk;
    Ok(())
}

pub(super) fn on_tune_ok<W>(
    t: &mut Transport<W>,
    broker: &Broker,
    ok: protocol::ConnectionTuneOk,
) -> AmqpResult<()> {
    let cfg = &broker.config;
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
    t.channel_max = channel_max;
    t.out.set_frame_max(ok.frame_max);
    t.pending_frame_max = Some(ok.frame_max);
    t.heartbeat = ok.heartbeat;
    t.phase = Phase::AwaitOpen;
    Ok(())
}

/// connection.open: the vhost the session will work in.
pub(super) fn on_open<W>(
    t: &mut Transport<W>,
    broker: &Broker,
    login: &Login,
    open: protocol::ConnectionOpen,
) -> AmqpResult<Arc<VHost>> {
    let name = open.virtual_host.as_str();
    // RabbitMQ's rabbit_reader:is_over_node_connection_limit (`connection_max`) comes first, then
    // rabbit_access_control:check_vhost_access (the vhost exists and the user has permissions in it).
    broker.try_open_connection().map_err(|limit| {
        info!(peer = %t.peer, limit, "connection refused: node connection limit reached");
        AmqpError::not_allowed(format!(
            "connection refused: node connection limit ({limit}) is reached"
        ))
    })?;
    let vhost = broker
        .vhost(name)
        .filter(|_| broker.users.vhost_access(&login.user, name));
    let Some(vhost) = vhost else {
        broker.connection_closed();
        info!(peer = %t.peer, user = login.user, vhost = name, "connection refused: no access to the vhost");
        return Err(AmqpError::not_allowed(format!(
            "access to vhost '{name}' refused for user '{}'",
            login.user
        )));
    };
    t.send_method(0, &Method::ConnectionOpenOk(protocol::ConnectionOpenOk));
    t.phase = Phase::Open;
    debug!(peer = %t.peer, user = login.user, vhost = name, "connection open");
    Ok(vhost)
}

/// A connection-class method on channel 0 of an open connection.
pub(super) fn on_connection_method<W>(t: &mut Transport<W>, m: Method) -> AmqpResult<()> {
    let (class_id, method_id) = (m.class_id(), m.method_id());
    match m {
        Method::ConnectionClose(_) => {
            t.send_method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
            t.phase = Phase::Closed;
            Ok(())
        }
        Method::ConnectionCloseOk(_) => {
            t.phase = Phase::Closed;
            Ok(())
        }
        Method::ConnectionUpdateSecret(_) => {
            t.send_method(
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
