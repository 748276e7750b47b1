//! The process's one `tracing` subscriber: the ordinary log (text or JSON, filtered
//! like `RUST_LOG`, the filter replaceable on SIGHUP) and, beside it, the security
//! events (`accounts::event`), written one JSON line each, byte for byte as emitted,
//! whatever the format or filter says.

use std::io::Write;

use clap::ValueEnum;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, ParseError, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::reload;

/// How ordinary log lines are written (security events are JSON either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One human-readable line per record.
    #[default]
    Text,
    /// One JSON object per record (timestamp, level, target, fields).
    Json,
}

/// What the log shows when neither `--log`, `RUST_LOG` nor `[log] filter` says: our own
/// crates' notes and every warning, but sqlx only for errors (its slow-statement
/// warnings would come and go with the machine's load, in CLI output too).
pub const DEFAULT_FILTER: &str =
    "warn,sqlx=error,sipward=info,pbx=info,console=info,accounts=info,store=info";

/// A filter that cannot be parsed: refused at start and on reload alike.
#[derive(Debug, thiserror::Error)]
#[error("the log filter {spec:?} is not valid: {source}")]
pub struct BadFilter {
    spec: String,
    #[source]
    source: ParseError,
}

/// Changes the running log's filter (SIGHUP).
#[derive(Debug, Clone)]
pub struct Log {
    filter: reload::Handle<Targets, Registry>,
}

impl Log {
    /// Replaces the filter; a bad one leaves the old in place.
    pub fn set_filter(&self, spec: &str) -> Result<(), ReloadError> {
        let filter = parse(spec)?;
        self.filter
            .reload(filter)
            .map_err(|e| ReloadError::Swap(e.to_string()))
    }
}

/// Why a new filter was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Bad(#[from] BadFilter),
    /// The subscriber is gone (only at exit).
    #[error("the log filter cannot be replaced: {0}")]
    Swap(String),
}

/// Refuses a filter that would not parse (the config file's, at load).
pub fn check(spec: &str) -> Result<(), BadFilter> {
    parse(spec).map(drop)
}

/// `target=level` directives and a bare default level, comma-separated, as RUST_LOG
/// writes them (`Targets`: no span or field filters, and no regex engine in the binary).
fn parse(spec: &str) -> Result<Targets, BadFilter> {
    spec.parse().map_err(|source| BadFilter {
        spec: spec.to_owned(),
        source,
    })
}

/// Installs the subscriber for this process, writing to stderr. Called once, first
/// thing in `main`.
pub fn init(format: Format, spec: Option<&str>) -> Result<Log, InitError> {
    let (subscriber, log) = subscriber(format, spec, std::io::stderr)?;
    tracing::subscriber::set_global_default(subscriber).map_err(|_| InitError::Twice)?;
    Ok(log)
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Bad(#[from] BadFilter),
    #[error("logging was set up twice")]
    Twice,
}

/// The subscriber `init` installs, writing to `writer` (tests pass a buffer).
fn subscriber<W>(
    format: Format,
    spec: Option<&str>,
    writer: W,
) -> Result<(impl Subscriber + Send + Sync, Log), BadFilter>
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    let filter = parse(spec.unwrap_or(DEFAULT_FILTER))?;
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_ansi(false);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        Format::Text => fmt.boxed(),
        Format::Json => fmt.json().flatten_event(true).boxed(),
    };
    let not_events = filter_fn(|m| m.target() != accounts::event::TARGET);
    let events =
        EventLines { writer }.with_filter(filter_fn(|m| m.target() == accounts::event::TARGET));
    let subscriber = Registry::default()
        .with(fmt.with_filter(filter.and(not_events)))
        .with(events);
    Ok((subscriber, Log { filter: handle }))
}

/// Writes each security event's message, as emitted, and a newline, in one write.
struct EventLines<W> {
    writer: W,
}

impl<S, W> Layer<S> for EventLines<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Message(String::new());
        event.record(&mut line);
        line.0.push('\n');
        // stderr gone (closed by the service manager): there is nowhere left to say so.
        if self
            .writer
            .make_writer()
            .write_all(line.0.as_bytes())
            .is_err()
        {
            accounts::background::count(accounts::background::Task::Cleanup);
        }
    }
}

/// The `message` field of an event, as formatted by its emitter.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A buffer the subscriber writes into.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("buffer").clone()).expect("utf-8")
        }
    }

    /// What `eprintln!("{event}")` wrote before events went through `tracing`.
    fn ban() -> serde_json::Value {
        serde_json::json!({
            "event": "ban", "source": "192.0.2.7", "reason": "auth.failures",
            "detail": "10 failed authentications within 10 minutes \"quoted\" \\ \u{e9}",
            "until": 1_800_000_000_i64, "persisted": true,
        })
    }

    fn logged(format: Format, spec: Option<&str>, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let (subscriber, _log) = subscriber(format, spec, buffer.clone()).expect("subscriber");
        tracing::subscriber::with_default(subscriber, emit);
        buffer.text()
    }

    #[test]
    fn security_events_are_their_json_line_byte_for_byte_in_every_format_and_filter() {
        let want = format!("{}\n", ban());
        for format in [Format::Text, Format::Json] {
            for spec in [
                None,
                Some("off"),
                Some("error"),
                Some("trace"),
                Some("sipward::event=off"),
            ] {
                let out = logged(format, spec, || accounts::event::emit(&ban()));
                assert_eq!(out, want, "{format:?} {spec:?}");
            }
        }
    }

    #[test]
    fn ordinary_records_follow_the_format_and_the_filter() {
        let text = logged(Format::Text, None, || {
            tracing::info!(target: "pbx::server", task = "flush", "writing failed");
            tracing::debug!(target: "pbx::server", "not shown by default");
        });
        assert!(
            text.contains("INFO pbx::server: writing failed task=\"flush\""),
            "{text}"
        );
        assert!(!text.contains("not shown"), "{text}");
        let json = logged(Format::Json, Some("debug"), || {
            tracing::debug!(target: "pbx::server", "shown at debug");
        });
        let line: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
        assert_eq!(line["level"], "DEBUG");
        assert_eq!(line["message"], "shown at debug");
        let silent = logged(Format::Text, Some("off"), || tracing::error!("dropped"));
        assert_eq!(silent, "");
    }

    #[test]
    fn the_filter_is_replaced_live_and_a_bad_one_is_refused() {
        let buffer = Buffer::default();
        let (subscriber, log) =
            subscriber(Format::Text, Some("warn"), buffer.clone()).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "pbx", "before");
            log.set_filter("info").expect("valid");
            tracing::info!(target: "pbx", "after");
            assert!(matches!(
                log.set_filter("pbx=loud"),
                Err(ReloadError::Bad(_))
            ));
            tracing::info!(target: "pbx", "kept");
        });
        let text = buffer.text();
        assert!(
            !text.contains("before") && text.contains("after") && text.contains("kept"),
            "{text}"
        );
        assert!(parse("pbx=verbose").is_err());
    }
}
