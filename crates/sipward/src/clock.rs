//! The real clock: the only place sipward reads the operating system's time. Every
//! library takes it as a [`policy::clock::Clock`].

use std::sync::Arc;

use policy::clock::Clock;

#[derive(Debug)]
struct SystemClock;

pub fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn instant(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
}
