//! The running server as the console sees it ([`RunningServer`]): the guard's ban check
//! and provisioning-probe counting (never a SIP ban where a phone is registered), and
//! the metrics.

use std::net::IpAddr;
use std::sync::Arc;

use accounts::running::{ProbeVerdict, RunningServer};

use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::registrar::Registrar;

/// The console's handle on this server.
#[derive(Debug)]
pub struct ServerHandle {
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    registrar: Arc<Registrar>,
}

impl ServerHandle {
    pub fn new(guard: Arc<Guard>, metrics: Arc<Metrics>, registrar: Arc<Registrar>) -> Self {
        Self {
            guard,
            metrics,
            registrar,
        }
    }
}

impl RunningServer for ServerHandle {
    fn admits(&self, source: IpAddr) -> bool {
        self.guard.admits(source)
    }

    fn provisioning_admits(&self, source: IpAddr, now: i64) -> bool {
        self.guard.admits(source) && self.guard.provisioning_admits(source, now)
    }

    fn provisioning_refused(&self, source: IpAddr, now: i64) -> ProbeVerdict {
        Metrics::inc(&self.metrics.provisioning_refused);
        let registered = self.registrar.registered_from(source);
        self.guard.provisioning_probe(source, now, registered)
    }

    fn provisioning_served(&self) {
        Metrics::inc(&self.metrics.provisioning_served);
    }

    fn provisioning_not_served(&self) {
        Metrics::inc(&self.metrics.provisioning_not_served);
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    fn targeted_accounts(&self, now: i64, limit: usize) -> Vec<(String, u32)> {
        self.guard.targeted_accounts(now, limit)
    }
}
