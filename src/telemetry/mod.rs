//! Log setup: JSON lines when stderr is not a terminal (containers), readable text on a
//! terminal, level from `RUST_LOG` or the config. Tokens are never logged anywhere.
//!
//! Access lines (target `jwks_sidecar::access`, one per request) are the only log volume that
//! grows with traffic, so they are batched: appended to a buffer that is written to stderr when
//! it passes [`BATCH_BYTES`], every [`FLUSH_EVERY`] by a background thread, before any other log
//! line (so the order of lines is kept), and at exit ([`flush`]). One `write(2)` per batch
//! instead of one per request is most of the access log's cost at high request rates. A
//! process killed with SIGKILL can lose at most the last [`FLUSH_EVERY`] of access lines.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub mod json;

/// The target of the per-request access line.
pub const ACCESS_TARGET: &str = "jwks_sidecar::access";
/// Access lines are written once this many bytes are pending.
pub const BATCH_BYTES: usize = 32 * 1024;
/// Pending access lines are never held longer than this.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let sink = BatchedStderr::global();
    // Colour only on a terminal: text logs redirected to a file or a collector stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(sink.clone());
    let installed = if json {
        builder.event_format(json::JsonLine).try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        sink.start_flusher();
    }
}

/// Writes out any access lines still pending. Call before the process exits.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush_pending();
    }
}

static SINK: OnceLock<BatchedStderr> = OnceLock::new();

/// A `MakeWriter` that batches access lines and writes everything else straight through, both
/// to one output (stderr in the product; any `Write` in tests).
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    batch_bytes: usize,
}

struct State {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
    flusher_started: bool,
}

impl BatchedStderr {
    fn global() -> &'static BatchedStderr {
        SINK.get_or_init(|| BatchedStderr::new(Box::new(std::io::stderr()), BATCH_BYTES))
    }

    /// A sink over `out` that batches up to `batch_bytes` of access lines.
    pub fn new(out: Box<dyn Write + Send>, batch_bytes: usize) -> Self {
        BatchedStderr {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pending: Vec::with_capacity(batch_bytes + 1024),
                    out,
                    flusher_started: false,
                }),
                batch_bytes,
            }),
        }
    }

    /// Starts the thread that writes pending access lines every [`FLUSH_EVERY`] (once).
    fn start_flusher(&self) {
        {
            let mut st = self.shared.lock();
            if st.flusher_started {
                return;
            }
            st.flusher_started = true;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                me.flush_pending();
            });
        if spawned.is_err() {
            // No thread: batching would hold lines indefinitely, so write them through.
            self.shared.lock().flusher_started = false;
        }
    }

    /// Writes the pending access lines out now.
    pub fn flush_pending(&self) {
        let mut st = self.shared.lock();
        st.write_pending();
        let _ = st.out.flush();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bytes behind; keep logging.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn write_pending(&mut self) {
        if !self.pending.is_empty() {
            // A failed write to stderr has nowhere to be reported; drop the batch.
            let _ = self.out.write_all(&self.pending);
            self.pending.clear();
        }
    }
}

/// One event's writer: the fmt layer formats the whole line, then writes it once.
pub struct EventWriter<'a> {
    shared: &'a Shared,
    batch: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut st = self.shared.lock();
        if self.batch && st.flusher_started {
            st.pending.extend_from_slice(buf);
            if st.pending.len() >= self.shared.batch_bytes {
                st.write_pending();
            }
            Ok(())
        } else {
            // Keep the order of lines: what is pending goes first.
            st.write_pending();
            st.out.write_all(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.batch {
            return Ok(());
        }
        self.shared.lock().out.flush()
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
            batch: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
            batch: meta.target() == ACCESS_TARGET,
        }
    }
}

/// At most `max` bytes of an untrusted string, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    #[test]
    fn access_lines_batch_other_lines_flush_them_in_order() {
        let out = Capture::default();
        let sink = BatchedStderr::new(Box::new(out.clone()), 1000);
        sink.shared.lock().flusher_started = true; // as if the flusher thread ran
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "jwks_sidecar::access", "a1");
            assert_eq!(out.text(), "", "access line held back");
            tracing::warn!("other");
            let t = out.text();
            assert!(
                t.find("a1").expect("a1") < t.find("other").expect("other"),
                "{t}"
            );
            for i in 0..200 {
                tracing::info!(target: "jwks_sidecar::access", "b{i}");
                if out.text().contains("b0") {
                    break;
                }
            }
            assert!(
                out.text().contains("b0"),
                "written once past the batch size"
            );
            tracing::info!(target: "jwks_sidecar::access", "last");
            assert!(!out.text().contains("last"));
            sink.flush_pending();
            assert!(out.text().contains("last"));
        });
    }

    #[test]
    fn without_a_flusher_access_lines_go_straight_out() {
        let out = Capture::default();
        let sink = BatchedStderr::new(Box::new(out.clone()), 1 << 20);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink)
            .without_time()
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "jwks_sidecar::access", "now");
        });
        assert!(out.text().contains("now"));
    }
}
