//! Switching tracing on and off (an `impl Broker` block): the management API's `PUT /api/vhosts/{vhost}`
//! with `{"tracing": true|false}` calls `set_tracing`; the flag is stored with the vhost (the store's trace
//! keyspace) and restored at start.

use std::sync::Arc;

use crate::broker::Broker;
use crate::vhost::VHost;

impl Broker {
    /// Gives a new or recovered vhost the recorder, with tracing on if it was stored so.
    pub(crate) fn attach_tracing(&self, vhost: &Arc<VHost>, on: bool) {
        vhost.trace.attach(self.tracer.clone(), &vhost.name);
        if on {
            if let Err(e) = self.tracer.start(&self.store) {
                tracing::error!(error = %e, "cannot start the trace recorder");
                return;
            }
            vhost.trace.set(true);
        }
    }

    /// Switches tracing for `vhost` (durable on return). False if there is no such vhost.
    pub fn set_tracing(&self, vhost: &str, on: bool) -> Result<bool, storage::StoreError> {
        let Some(v) = self.vhost(vhost) else {
            return Ok(false);
        };
        if on {
            if let Err(e) = self.tracer.start(&self.store) {
                tracing::error!(error = %e, "cannot start the trace recorder: events will not be recorded");
            }
        }
        let t = self.store.set_vhost_tracing(vhost, on)?;
        self.store.wait_durable_blocking(t)?;
        if v.trace.on() != on {
            tracing::info!(vhost, on, "message tracing switched");
        }
        v.trace.set(on);
        Ok(true)
    }

    /// Whether tracing is on for `vhost`.
    pub fn tracing_on(&self, vhost: &str) -> bool {
        self.vhost(vhost).is_some_and(|v| v.trace.on())
    }
}
