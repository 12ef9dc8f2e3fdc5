//! A vhost's policies applied to its live queues: when a policy is set or deleted every queue of the vhost
//! gets its effective arguments again (`Queue::apply_args`), and a new queue gets them when declared. No
//! message is lost: a queue over a new length limit dead-letters what it drops, as RabbitMQ does.

use std::sync::Arc;

use crate::clock::now_ms;
use crate::policy::{self, Policy};
use crate::queue::{DeadLetters, Queue};
use crate::queue_args::QueueArgs;
use crate::vhost::VHost;

impl VHost {
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.policies.read().clone()
    }

    /// The policy in force for a queue name.
    pub fn policy_for(&self, queue: &str) -> Option<Arc<Policy>> {
        policy::for_queue(&self.policies.read(), queue).cloned()
    }

    /// Adds or replaces a policy (by name) and applies the policies to every queue.
    pub fn put_policy(&self, p: Policy) {
        {
            let mut ps = self.policies.write();
            ps.retain(|x| x.name != p.name);
            ps.push(Arc::new(p));
            ps.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.apply_policies();
    }

    /// Removes a policy; false if there was none by that name.
    pub fn delete_policy(&self, name: &str) -> bool {
        let removed = {
            let mut ps = self.policies.write();
            let before = ps.len();
            ps.retain(|x| x.name != name);
            ps.len() != before
        };
        if removed {
            self.apply_policies();
        }
        removed
    }

    /// Every queue gets the arguments in force now (a queue no policy matches any more gets its declared
    /// arguments back).
    pub fn apply_policies(&self) {
        for q in self.queues() {
            self.reapply(&q);
        }
        let names: Vec<String> = self
            .router
            .read()
            .exchanges()
            .filter(|x| !x.name.is_empty())
            .map(|x| x.name.to_string())
            .collect();
        for x in names {
            self.reapply_exchange(&x);
        }
    }

    /// A new exchange: a policy's `alternate-exchange`, if one matches.
    pub fn apply_exchange_policy(&self, name: &str) {
        if !self.policies.read().is_empty() {
            self.reapply_exchange(name);
        }
    }

    fn reapply_exchange(&self, name: &str) {
        let ae = {
            let ps = self.policies.read();
            policy::for_exchange(&ps, name).and_then(|p| {
                p.definition
                    .get("alternate-exchange")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
        };
        self.router.write().set_policy_alternate(name, ae.as_deref());
    }

    /// A new queue: the policy that matches it, if any.
    pub fn apply_policy(&self, q: &Arc<Queue>) {
        if !self.policies.read().is_empty() {
            self.reapply(q);
        }
    }

    fn reapply(&self, q: &Arc<Queue>) {
        let p = self.policy_for(q.name());
        let merged = policy::merged_args(&q.spec.arguments, p.as_deref());
        let now = now_ms();
        let mut dead = DeadLetters::new();
        q.apply_args(QueueArgs::parse(&merged), now, &mut dead);
        self.dead_letter(q, &mut dead, now);
    }
}
