//! Logging for every Basalt binary (`basalt`, `basalt-updated`, `basaltctl`, later
//! `basalt-rollout`): one call, [`init`], installs a `tracing` subscriber that writes to stderr
//! in the form that suits where stderr goes.
//!
//! Owns: the choice of output form, the level from the environment, the line format. Does not
//! own: what is logged (each crate logs with `tracing` and structured fields), the initramfs's
//! logging (`basalt-init` is std-only and writes to `/dev/kmsg` itself).
//!
//! - **Under systemd** (stderr is the journal: the `JOURNAL_STREAM` variable names the device
//!   and inode of stderr, which is how systemd tells a service its stderr is a journal stream):
//!   no timestamps (journald adds its own) and each line starts with a `<N>` syslog priority
//!   prefix, which journald strips and keeps as the entry's priority (`journalctl -p warning`
//!   works). Comparing dev:ino, not just checking that the variable is set, matters: a child
//!   process that inherited the variable but whose stderr was redirected must not write
//!   prefixes into a file or a terminal.
//! - **Otherwise** (a terminal, a file, a test): human lines with an RFC 3339 UTC timestamp and
//!   the level.
//!
//! Lines are `message key=value …`, with the fields of the enclosing spans before the message.
//! The level comes from [`LEVEL_ENV`] (`error`, `warn`, `info`, `debug`, `trace`, `off`;
//! default `info`). A per-module filter language was left out on purpose: it would pull a regex
//! engine into every binary, and one level has been enough so far.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

pub use tracing_subscriber::filter::LevelFilter;

/// The environment variable holding the log level.
pub const LEVEL_ENV: &str = "BASALT_LOG";

/// Where the lines go, which decides their form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// stderr is connected to the journal: `<N>` priority prefixes, no timestamps.
    Journal,
    /// Anything else: timestamps and level names.
    Human,
}

/// Why a level name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelError {
    pub value: String,
}

impl fmt::Display for LevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{LEVEL_ENV}={:?} is not a log level (expected error, warn, info, debug, trace or off)",
            self.value
        )
    }
}

impl std::error::Error for LevelError {}

/// Parse a level name (case-insensitive, surrounding spaces ignored).
pub fn parse_level(value: &str) -> Result<LevelFilter, LevelError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::ERROR),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        "off" => Ok(LevelFilter::OFF),
        _ => Err(LevelError {
            value: value.to_owned(),
        }),
    }
}

/// The output form for a `JOURNAL_STREAM` value (`DEV:INO`, decimal) and stderr's actual
/// device and inode: the journal only when they match.
pub fn detect_output(journal_stream: Option<&str>, stderr_dev_ino: Option<(u64, u64)>) -> Output {
    let parsed = journal_stream.and_then(|v| {
        let (dev, ino) = v.trim().split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match (parsed, stderr_dev_ino) {
        (Some(expected), Some(actual)) if expected == actual => Output::Journal,
        _ => Output::Human,
    }
}

/// stderr's device and inode, from `fstat(2)`.
fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The syslog priority journald should record for a `tracing` level.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The line format of both outputs.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    output: Output,
}

impl LineFormat {
    pub fn new(output: Output) -> Self {
        Self { output }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level();
        match self.output {
            Output::Journal => write!(writer, "<{}>", syslog_priority(level))?,
            Output::Human => write!(
                writer,
                "{} {:>5} ",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                level
            )?,
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                match ext.get::<FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        write!(writer, "{}{{{}}}: ", span.name(), fields)?
                    }
                    _ => write!(writer, "{}: ", span.name())?,
                }
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A subscriber writing to `make_writer` in the `output` form at `level`. [`init`] installs
/// this with stderr; tests pass their own writer.
pub fn subscriber<W>(output: Output, level: LevelFilter, make_writer: W) -> impl Subscriber
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // No colour codes in field values: neither the journal nor a log file wants them (another
    // crate may turn on tracing-subscriber's `ansi` feature for the whole build).
    tracing_subscriber::fmt()
        .with_ansi(false)
        .event_format(LineFormat::new(output))
        .with_max_level(level)
        .with_writer(make_writer)
        .finish()
}

/// Why [`init`] could not install the subscriber.
#[derive(Debug)]
pub struct InitError(tracing::subscriber::SetGlobalDefaultError);

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "installing the log subscriber: {}", self.0)
    }
}

impl std::error::Error for InitError {}

/// Install the process-wide subscriber on stderr: the form from `JOURNAL_STREAM`, the level
/// from [`LEVEL_ENV`]. A level that does not parse is reported once (as a warning, through the
/// new subscriber) and `info` is used: a typo in an environment file must not silence a
/// service. Call once, first thing in `main`; a second call returns an error.
pub fn init() -> Result<Output, InitError> {
    let output = detect_output(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_dev_ino(),
    );
    let (level, bad) = match std::env::var(LEVEL_ENV) {
        Ok(v) => match parse_level(&v) {
            Ok(l) => (l, None),
            Err(e) => (LevelFilter::INFO, Some(e)),
        },
        Err(_) => (LevelFilter::INFO, None),
    };
    tracing::subscriber::set_global_default(subscriber(output, level, std::io::stderr))
        .map_err(InitError)?;
    if let Some(e) = bad {
        tracing::warn!("{e}; logging at info");
    }
    Ok(output)
}

/// Whether stderr is a terminal (for binaries that draw progress bars on it).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(output: Output, level: LevelFilter, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(output, level, buf.clone()), f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn journal_lines_carry_priority_and_no_timestamp() {
        let out = capture(Output::Journal, LevelFilter::DEBUG, || {
            tracing::error!(slot = "b", "boom");
            tracing::warn!("careful");
            tracing::info!(version = "2.0.0", bytes = 42u64, "staged");
            tracing::debug!("details");
            tracing::trace!("not shown");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>boom slot=\"b\"",
                "<4>careful",
                "<6>staged version=\"2.0.0\" bytes=42",
                "<7>details",
            ]
        );
    }

    #[test]
    fn human_lines_carry_timestamp_level_and_spans() {
        let out = capture(Output::Human, LevelFilter::INFO, || {
            let span = tracing::info_span!("update", version = "2.0.0");
            let _g = span.enter();
            tracing::info!(done = 3u64, "downloading");
            tracing::debug!("hidden at info");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        // 2026-12-02T02:27:05.123Z  INFO update{version="2.0.0"}: downloading done=3
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert_eq!(
            rest.trim_start(),
            "INFO update{version=\"2.0.0\"}: downloading done=3"
        );
        assert!(!line.starts_with('<'));
    }

    #[test]
    fn output_is_journal_only_when_dev_ino_match() {
        assert_eq!(
            detect_output(Some("8:1234"), Some((8, 1234))),
            Output::Journal
        );
        assert_eq!(detect_output(Some("8:1234"), Some((8, 999))), Output::Human);
        assert_eq!(detect_output(Some("8:1234"), None), Output::Human);
        assert_eq!(detect_output(None, Some((8, 1234))), Output::Human);
        assert_eq!(
            detect_output(Some("garbage"), Some((8, 1234))),
            Output::Human
        );
        assert_eq!(detect_output(Some("8:"), Some((8, 0))), Output::Human);
        assert_eq!(
            detect_output(Some(" 8:1234\n"), Some((8, 1234))),
            Output::Journal
        );
    }

    #[test]
    fn stderr_redirected_to_a_file_is_not_the_journal() {
        // The real fstat path: this test's stderr is whatever the harness gave it; a
        // JOURNAL_STREAM naming a different file must never select the journal form.
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("x")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().unwrap();
        let other = format!("{}:{}", m.dev(), m.ino());
        assert_eq!(detect_output(Some(&other), stderr_dev_ino()), Output::Human);
    }

    #[test]
    fn levels_parse_and_refuse() {
        assert_eq!(parse_level("debug"), Ok(LevelFilter::DEBUG));
        assert_eq!(parse_level(" WARN\n"), Ok(LevelFilter::WARN));
        assert_eq!(parse_level("warning"), Ok(LevelFilter::WARN));
        assert_eq!(parse_level("off"), Ok(LevelFilter::OFF));
        let e = parse_level("verbose").unwrap_err();
        assert!(e.to_string().contains("BASALT_LOG=\"verbose\""), "{e}");
        assert!(parse_level("").is_err());
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
    }
}
