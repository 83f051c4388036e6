//! What `tracing` logs, captured per test: one subscriber for the whole process, which
//! writes each event into the capture of the thread that logged it.
//!
//! `tracing` allows one global subscriber per process, and the tests of this binary share
//! one process. A subscriber scoped to the test's thread (`set_default`) is not reliable
//! beside other tests: `tracing` caches, per log statement, whether any subscriber wants
//! it, and while the only subscriber is scoped to one thread, a statement that another
//! thread runs first is cached as wanted by nobody, for good. So the subscriber here is
//! global, and its filter is asked at every event whether the thread that logs is
//! capturing at that level; a test sees exactly what its own thread logged, whatever runs
//! beside it. Statements that other tests ran before it was installed are asked again once
//! it is.
//!
//! A test that captures runs on a current-thread runtime, so that everything its requests
//! log is logged on its thread.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::filter::{LevelFilter, dynamic_filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What this thread logs, at `level` and above, until the returned [`Capture`] is dropped.
pub fn capture(level: LevelFilter) -> Capture {
    install();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    CAPTURING.with(|capturing| {
        let previous = capturing.replace(Some((Arc::clone(&buffer), level)));
        assert!(previous.is_none(), "one capture per thread at a time");
    });
    Capture { buffer }
}

/// A running capture; see [`capture`].
pub struct Capture {
    buffer: Buffer,
}

impl Capture {
    /// Everything captured so far, one line per event.
    pub fn text(&self) -> String {
        String::from_utf8(self.buffer.lock().unwrap().clone()).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.with(|capturing| capturing.replace(None));
    }
}

/// Where a capture's lines go.
type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// The current thread's capture and the most verbose level it wants.
    static CAPTURING: RefCell<Option<(Buffer, LevelFilter)>> = const { RefCell::new(None) };
}

/// Whether the current thread captures events at `level`.
fn wanted(level: LevelFilter) -> bool {
    // `try_with`: something may log while the thread's locals are being torn down.
    CAPTURING
        .try_with(
            |capturing| matches!(capturing.borrow().as_ref(), Some((_, wanted)) if *wanted >= level),
        )
        .unwrap_or(false)
}

/// The current thread's capture, if it has one.
fn buffer() -> Option<Buffer> {
    CAPTURING
        .try_with(|capturing| {
            capturing
                .borrow()
                .as_ref()
                .map(|(buffer, _)| Arc::clone(buffer))
        })
        .ok()
        .flatten()
}

/// Installs the process's subscriber, once.
fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_max_level(LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(ThreadWriter)
            .finish()
            // A dynamic filter, asked at every event: `tracing` caches "sometimes" for every
            // statement. (`filter_fn` would cache its first answer, which depends on the
            // thread that happened to run the statement first.)
            .with(dynamic_filter_fn(|metadata, _| {
                wanted(LevelFilter::from_level(*metadata.level()))
            }))
            .try_init()
            .expect("the only global subscriber of this test binary");
        // Another test's statement that ran while this was being installed (after the
        // subscriber was announced to `tracing`, before it became the global default)
        // cached "never". Ask every statement again, now that it is the default.
        tracing_core::callsite::rebuild_interest_cache();
    });
}

/// Writes to the capture of the thread that logs.
struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = Sink;

    // Called only for events the filter let through, so at a level the thread wants.
    fn make_writer(&'a self) -> Sink {
        Sink(buffer())
    }
}

/// One event's line, appended to a capture, or dropped when the thread captures nothing.
struct Sink(Option<Buffer>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Some(buffer) = &self.0 {
            buffer.lock().unwrap().extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
