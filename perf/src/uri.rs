//! `amqp://user:pass@host:port/vhost` parsing (the subset of the RabbitMQ URI spec a load tool needs).

use anyhow::{bail, Context};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 5672).
    pub port: u16,
    /// User name (default `guest`).
    pub user: String,
    /// Password (default `guest`).
    pub password: String,
    /// Virtual host (default `/`).
    pub vhost: String,
}

impl Default for AmqpUri {
    fn default() -> Self {
        AmqpUri {
            host: "127.0.0.1".into(),
            port: 5672,
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
        }
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("truncated %-escape in URI")?;
            out.push(u8::from_str_radix(hex, 16).context("bad %-escape in URI")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("URI is not UTF-8 after %-decoding")
}

impl AmqpUri {
    /// Parses `amqp://[user[:pass]@]host[:port][/vhost]`. An absent path means vhost `/`;
    /// `/%2f` is `/`; `/` alone is the empty vhost name as in the spec, which we also map to `/`.
    pub fn parse(s: &str) -> anyhow::Result<AmqpUri> {
        let rest = match s.split_once("://") {
            Some(("amqp", rest)) => rest,
            Some(("amqps", _)) => bail!("amqps (TLS) is not supported"),
            Some((scheme, _)) => bail!("unsupported URI scheme {scheme:?}"),
            None => bail!("URI must start with amqp://"),
        };
        let mut uri = AmqpUri::default();
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let path = path.map(|p| p.split(['?', '#']).next().unwrap_or(""));
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                uri.user = percent_decode(u)?;
                uri.password = percent_decode(p)?;
                hp
            }
            None => authority,
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [ipv6]:port
            let (h, after) = h.split_once(']').context("unclosed [ in URI host")?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            uri.host = percent_decode(host)?;
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            uri.port = p.parse().with_context(|| format!("bad port {p:?}"))?;
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            uri.vhost = percent_decode(p)?;
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_uris() {
        let u = AmqpUri::parse("amqp://bob:s%40cret@example.com:5673/prod").unwrap();
        assert_eq!(
            u,
            AmqpUri {
                host: "example.com".into(),
                port: 5673,
                user: "bob".into(),
                password: "s@cret".into(),
                vhost: "prod".into()
            }
        );
        let u = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("localhost", 5672, "/")
        );
        assert_eq!(u.user, "guest");
        let u = AmqpUri::parse("amqp://127.0.0.1:1234/%2f").unwrap();
        assert_eq!((u.port, u.vhost.as_str()), (1234, "/"));
        let u = AmqpUri::parse("amqp://[::1]:99/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.vhost.as_str()), ("::1", 99, "/"));
        assert!(AmqpUri::parse("http://x").is_err());
        assert!(AmqpUri::parse("amqp://h:notaport").is_err());
    }
}
