//! The running server as the console sees it ([`RunningServer`]): the guard's ban check
//! and provisioning-probe counting, and the metrics.

use std::net::IpAddr;
use std::sync::Arc;

use accounts::running::RunningServer;

use crate::guard::Guard;
use crate::metrics::Metrics;

/// The console's handle on this server.
#[derive(Debug)]
pub struct ServerHandle {
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
}

impl ServerHandle {
    pub fn new(guard: Arc<Guard>, metrics: Arc<Metrics>) -> Self {
        Self { guard, metrics }
    }
}

impl RunningServer for ServerHandle {
    fn admits(&self, source: IpAddr) -> bool {
        self.guard.admits(source)
    }

    fn provisioning_refused(&self, source: IpAddr, now: i64) -> bool {
        Metrics::inc(&self.metrics.provisioning_refused);
        self.guard.provisioning_probe(source, now)
    }

    fn provisioning_served(&self) {
        Metrics::inc(&self.metrics.provisioning_served);
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}
