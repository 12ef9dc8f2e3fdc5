//! Policies, RabbitMQ's model: a name, a regex `pattern` over queue (or exchange) names, `apply-to`, a
//! `priority` and a `definition` of keys. The highest-priority matching policy applies to a queue; its keys
//! merge with the queue's own arguments as RabbitMQ's classic queue does (`rabbit_amqqueue_process:
//! process_args_policy`): for `message-ttl`, `expires`, `max-length`, `max-length-bytes` and
//! `delivery-limit` the smaller of argument and policy wins; for `dead-letter-exchange`,
//! `dead-letter-routing-key`, `overflow` and the retry keys the queue's argument wins and the policy fills in.

use std::sync::Arc;

use protocol::{FieldTable, FieldValue, LongStr};
use regex::Regex;
use serde_json::{Map, Value};

/// Keys where the smaller of argument and policy wins (`res_min`).
const MIN_KEYS: [&str; 5] = [
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "delivery-limit",
];
/// Keys where the queue's argument wins (`res_arg`).
const ARG_KEYS: [&str; 6] = [
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "overflow",
    "delayed-retry-min",
    "delayed-retry-max",
    "delayed-retry-multiplier",
];
/// Keys applied to exchanges.
const EXCHANGE_KEYS: [&str; 1] = ["alternate-exchange"];

#[derive(Debug, Clone)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    re: Regex,
    /// `queues`, `classic_queues`, `exchanges` or `all`.
    pub apply_to: String,
    pub priority: i64,
    pub definition: Map<String, Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid pattern '{0}': {1}")]
    Pattern(String, String),
    #[error("invalid apply-to '{0}': expected queues, classic_queues, exchanges or all")]
    ApplyTo(String),
    #[error("definition must be a non-empty object")]
    Empty,
    #[error("{0}")]
    Key(String),
}

impl Policy {
    pub fn new(
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: Map<String, Value>,
    ) -> Result<Policy, PolicyError> {
        let re = Regex::new(pattern).map_err(|e| PolicyError::Pattern(pattern.into(), e.to_string()))?;
        if !matches!(apply_to, "queues" | "classic_queues" | "exchanges" | "all") {
            return Err(PolicyError::ApplyTo(apply_to.into()));
        }
        if definition.is_empty() {
            return Err(PolicyError::Empty);
        }
        for (k, v) in &definition {
            validate_key(k, v)?;
        }
        Ok(Policy {
            vhost: vhost.into(),
            name: name.into(),
            pattern: pattern.into(),
            re,
            apply_to: apply_to.into(),
            priority,
            definition,
        })
    }

    pub fn applies_to_queue(&self, name: &str) -> bool {
        matches!(self.apply_to.as_str(), "queues" | "classic_queues" | "all") && self.re.is_match(name)
    }

    pub fn applies_to_exchange(&self, name: &str) -> bool {
        matches!(self.apply_to.as_str(), "exchanges" | "all") && self.re.is_match(name)
    }

    /// The definition keys that take effect on queues (those Mailroom implements).
    pub fn queue_definition(&self) -> Map<String, Value> {
        self.definition
            .iter()
            .filter(|(k, _)| MIN_KEYS.contains(&k.as_str()) || ARG_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn validate_key(k: &str, v: &Value) -> Result<(), PolicyError> {
    let bad = |what: &str| Err(PolicyError::Key(format!("{k}: {what}")));
    if MIN_KEYS.contains(&k) || k.starts_with("delayed-retry-") {
        return match v.as_i64() {
            Some(n) if n >= 0 => Ok(()),
            _ => bad("must be a non-negative integer"),
        };
    }
    match k {
        "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange" => {
            if v.is_string() {
                Ok(())
            } else {
                bad("must be a string")
            }
        }
        "overflow" => match v.as_str() {
            Some("drop-head" | "reject-publish" | "reject-publish-dlx") => Ok(()),
            _ => bad("must be drop-head, reject-publish or reject-publish-dlx"),
        },
        // RabbitMQ keys Mailroom accepts and does not act on (they have no meaning for its queue kind).
        "queue-mode"
        | "queue-version"
        | "ha-mode"
        | "ha-params"
        | "ha-sync-mode"
        | "queue-master-locator"
        | "max-age"
        | "stream-max-segment-size-bytes"
        | "federation-upstream-set" => Ok(()),
        other if EXCHANGE_KEYS.contains(&other) => Ok(()),
        other => Err(PolicyError::Key(format!(
            "{other} is not a policy key Mailroom knows"
        ))),
    }
}

/// The policy in force for a queue: the highest priority among those matching (RabbitMQ's
/// `rabbit_policy:match_all` sorted by priority; a tie goes to the name that sorts first).
pub fn for_queue<'a>(policies: &'a [Arc<Policy>], queue: &str) -> Option<&'a Arc<Policy>> {
    policies
        .iter()
        .filter(|p| p.applies_to_queue(queue))
        .max_by(|a, b| a.priority.cmp(&b.priority).then_with(|| b.name.cmp(&a.name)))
}

/// The policy in force for an exchange (same rule as for queues).
pub fn for_exchange<'a>(policies: &'a [Arc<Policy>], exchange: &str) -> Option<&'a Arc<Policy>> {
    policies
        .iter()
        .filter(|p| p.applies_to_exchange(exchange))
        .max_by(|a, b| a.priority.cmp(&b.priority).then_with(|| b.name.cmp(&a.name)))
}

/// A queue's declared arguments merged with a policy's keys, as the table the queue parses.
pub fn merged_args(declared: &FieldTable, policy: Option<&Policy>) -> FieldTable {
    let Some(policy) = policy else {
        return declared.clone();
    };
    let mut t = declared.clone();
    for (k, v) in &policy.definition {
        let arg = format!("x-{k}");
        if MIN_KEYS.contains(&k.as_str()) {
            let Some(p) = v.as_i64() else { continue };
            let value = match declared.get(&arg).and_then(FieldValue::as_i64) {
                Some(a) => a.min(p),
                None => p,
            };
            t.insert(arg.as_str(), FieldValue::I64(value));
        } else if ARG_KEYS.contains(&k.as_str()) && declared.get(&arg).is_none() {
            let value = match v {
                Value::String(s) => FieldValue::LongStr(LongStr::from(s.as_str())),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => FieldValue::I64(i),
                    None => continue,
                },
                _ => continue,
            };
            t.insert(arg.as_str(), value);
        }
    }
    t
}

/// The definition RabbitMQ shows as `effective_policy_definition`: the policy's queue keys.
pub fn effective_definition(policy: Option<&Policy>) -> Value {
    Value::Object(policy.map(|p| p.queue_definition()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, pattern: &str, priority: i64, def: Value) -> Arc<Policy> {
        let Value::Object(m) = def else { panic!() };
        Arc::new(Policy::new("/", name, pattern, "queues", priority, m).unwrap())
    }

    #[test]
    fn highest_priority_wins_and_arguments_merge_as_rabbitmq() {
        let ps = vec![
            policy("low", ".*", 0, json!({"max-length": 100})),
            policy(
                "high",
                "^jobs",
                5,
                json!({"max-length": 10, "dead-letter-exchange": "dlx", "message-ttl": 60000}),
            ),
        ];
        assert_eq!(for_queue(&ps, "jobs.a").unwrap().name, "high");
        assert_eq!(for_queue(&ps, "other").unwrap().name, "low");
        let mut declared = FieldTable::new();
        declared.insert("x-max-length", FieldValue::I64(3));
        declared.insert(
            "x-dead-letter-exchange",
            FieldValue::LongStr(LongStr::from("mine")),
        );
        let m = merged_args(&declared, for_queue(&ps, "jobs.a").map(|p| &**p));
        // min(3, 10) = 3; the argument's DLX wins; the TTL comes from the policy.
        assert_eq!(m.get("x-max-length"), Some(&FieldValue::I64(3)));
        assert_eq!(
            m.get("x-dead-letter-exchange").and_then(|v| v.as_str()),
            Some("mine")
        );
        assert_eq!(m.get("x-message-ttl"), Some(&FieldValue::I64(60000)));
        let m = merged_args(&FieldTable::new(), for_queue(&ps, "jobs.a").map(|p| &**p));
        assert_eq!(m.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(
            m.get("x-dead-letter-exchange").and_then(|v| v.as_str()),
            Some("dlx")
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        let m = |v: Value| match v {
            Value::Object(m) => m,
            _ => panic!(),
        };
        assert!(Policy::new("/", "p", "(", "queues", 0, m(json!({"max-length": 1}))).is_err());
        assert!(Policy::new("/", "p", ".*", "streams", 0, m(json!({"max-length": 1}))).is_err());
        assert!(Policy::new("/", "p", ".*", "queues", 0, m(json!({}))).is_err());
        assert!(Policy::new("/", "p", ".*", "queues", 0, m(json!({"max-length": "ten"}))).is_err());
        assert!(Policy::new("/", "p", ".*", "queues", 0, m(json!({"overflow": "explode"}))).is_err());
        assert!(Policy::new("/", "p", ".*", "queues", 0, m(json!({"no-such-key": 1}))).is_err());
    }
}
