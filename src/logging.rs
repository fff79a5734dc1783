//! Logging set-up from Haraka's `log.ini` and `loglevel` files (documented in `docs/logging.md`).
//!
//! [`load`] reads and validates the files (a bad value is a [`ConfigError`] naming the file and
//! the key); [`init`] installs the global `tracing` subscriber writing to stderr. The
//! environment variable `POSTA_LOG` (an `EnvFilter`), when set, replaces the level filter.

use std::fmt;
use std::io::IsTerminal;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{read_value, ConfigError, IniFile};

/// The environment variable whose `EnvFilter` overrides the configured level.
pub const ENV_VAR: &str = "POSTA_LOG";

/// Haraka's level names; the index is Haraka's level number (`LOGEMERG` = 0 … `LOGDATA` = 9).
pub const LEVELS: [&str; 10] = [
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug", "protocol", "data",
];

/// `log.ini [main] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// tracing-subscriber's human-readable line.
    Default,
    /// One `key=value` line per event.
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// What `log.ini` and `loglevel` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Haraka level name (one of [`LEVELS`]).
    pub level: &'static str,
    /// `[main] timestamps`.
    pub timestamps: bool,
    /// `[main] format`.
    pub format: Format,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info",
            timestamps: false,
            format: Format::Default,
        }
    }
}

impl LogSettings {
    /// The tracing level for posta's own events.
    pub fn tracing_level(&self) -> tracing::Level {
        tracing_level(self.level)
    }

    /// EnvFilter directives: posta at the configured level, other crates at `warn` (or
    /// `error` when the configured level is error or quieter).
    pub fn directives(&self) -> String {
        let own = self.tracing_level();
        let others = if own == tracing::Level::ERROR { "error" } else { "warn" };
        format!("{others},posta={}", own.as_str().to_ascii_lowercase())
    }
}

/// Haraka level name → tracing level.
pub fn tracing_level(haraka: &str) -> tracing::Level {
    match haraka {
        "data" | "protocol" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" | "notice" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    }
}

/// A level as Haraka accepts it: a name (any case, optional `LOG` prefix) or a number 0–9.
pub fn parse_level(value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    if let Ok(n) = v.parse::<usize>() {
        return LEVELS.get(n).copied();
    }
    let v = v.strip_prefix("log").unwrap_or(&v);
    LEVELS.iter().copied().find(|l| *l == v)
}

fn level_problem(value: &str) -> String {
    format!("'{value}' is not a log level ({}, or 0-9)", LEVELS.join(", "))
}

/// Read and validate `<dir>/log.ini` and `<dir>/loglevel` (which wins over `[main] level`).
/// Missing files mean Haraka's defaults: level `info`, no timestamps, `default` format.
pub fn load(dir: &Path) -> Result<LogSettings, ConfigError> {
    let ini = IniFile::load(dir, "log.ini")?;
    let level = match ini.get("main", "level") {
        None | Some("") => "info",
        Some(v) => parse_level(v).ok_or_else(|| ini.invalid("main", "level", level_problem(v)))?,
    };
    let level = match read_value(dir, "loglevel")? {
        None => level,
        Some(v) => parse_level(&v).ok_or_else(|| ConfigError::new("loglevel", None, level_problem(&v)))?,
    };
    let timestamps = ini.bool("main", "timestamps", false)?;
    let format = match ini
        .choice("main", "format", &["default", "logfmt", "json"], "default")?
        .as_str()
    {
        "logfmt" => Format::Logfmt,
        "json" => Format::Json,
        _ => Format::Default,
    };
    Ok(LogSettings {
        level,
        timestamps,
        format,
    })
}

/// Install the global subscriber (stderr). `POSTA_LOG`, when set and not empty, is the filter
/// instead of the configured level; an unparsable `POSTA_LOG` is warned about and ignored.
/// Does nothing if a global subscriber is already installed.
pub fn init(settings: &LogSettings) {
    let mut bad_env = None;
    let filter = match std::env::var(ENV_VAR) {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            bad_env = Some(format!("{ENV_VAR}={v:?} ignored: {e}"));
            EnvFilter::new(settings.directives())
        }),
        _ => EnvFilter::new(settings.directives()),
    };
    let ansi = std::io::stderr().is_terminal();
    let ts = settings.timestamps;
    let layer = match settings.format {
        Format::Default if ts => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        Format::Default => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .without_time()
            .boxed(),
        Format::Json if ts => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .without_time()
            .with_writer(std::io::stderr)
            .boxed(),
        Format::Logfmt => tracing_subscriber::fmt::layer()
            .event_format(Logfmt { timestamps: ts })
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_ok()
    {
        if let Some(msg) = bad_env {
            tracing::warn!("{msg}");
        }
    }
}

/// `format=logfmt`: `[ts=<RFC 3339 UTC>] level=INFO target=<module> message="…" key=value…`.
struct Logfmt {
    timestamps: bool,
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.timestamps {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            write!(w, "ts={now} ")?;
        }
        let meta = event.metadata();
        write!(w, "level={} target={}", meta.level().as_str(), quote(meta.target()))?;
        let mut fields = LogfmtFields::default();
        event.record(&mut fields);
        if let Some(m) = fields.message {
            write!(w, " message={}", quote(&m))?;
        }
        w.write_str(&fields.rest)?;
        // Fields of the spans the event is in, outermost first, as the field formatter
        // wrote them (the default one writes `key=value`).
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !f.is_empty() {
                        write!(w, " {}", f.fields)?;
                    }
                }
            }
        }
        writeln!(w)
    }
}

#[derive(Default)]
struct LogfmtFields {
    message: Option<String>,
    rest: String,
}

impl LogfmtFields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.rest.push(' ');
            self.rest.push_str(field.name());
            self.rest.push('=');
            self.rest.push_str(&quote(&value));
        }
    }
}

impl Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// A logfmt value: bare when it is a non-empty run of printable non-space characters without
/// `"` or `=`, otherwise double-quoted with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{..}` escapes.
fn quote(v: &str) -> String {
    let bare = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if bare {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn defaults_without_files() {
        let d = dir_with(&[]);
        assert_eq!(load(d.path()).unwrap(), LogSettings::default());
        assert_eq!(LogSettings::default().directives(), "warn,posta=info");
    }

    #[test]
    fn levels_map_to_tracing() {
        for (h, t) in [
            ("data", "trace"),
            ("protocol", "trace"),
            ("debug", "debug"),
            ("info", "info"),
            ("notice", "info"),
            ("warn", "warn"),
            ("error", "error"),
            ("crit", "error"),
            ("alert", "error"),
            ("emerg", "error"),
        ] {
            assert_eq!(tracing_level(h).as_str().to_ascii_lowercase(), t, "{h}");
        }
        assert_eq!(parse_level("LOGDEBUG"), Some("debug"));
        assert_eq!(parse_level(" Notice "), Some("notice"));
        assert_eq!(parse_level("9"), Some("data"));
        assert_eq!(parse_level("10"), None);
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn log_ini_and_loglevel_override() {
        let d = dir_with(&[("log.ini", "[main]\nlevel=debug\ntimestamps=true\nformat=JSON\n")]);
        let s = load(d.path()).unwrap();
        assert_eq!((s.level, s.timestamps, s.format), ("debug", true, Format::Json));
        assert_eq!(s.directives(), "warn,posta=debug");
        std::fs::write(d.path().join("loglevel"), "# quick override\nerror\n").unwrap();
        let s = load(d.path()).unwrap();
        assert_eq!(s.level, "error");
        assert_eq!(s.directives(), "error,posta=error");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        for (file, text, want) in [
            ("log.ini", "[main]\nlevel=loud\n", "[main] level"),
            ("log.ini", "[main]\nformat=xml\n", "[main] format"),
            ("log.ini", "[main]\ntimestamps=sometimes\n", "[main] timestamps"),
            ("loglevel", "loud\n", "loglevel"),
        ] {
            let d = dir_with(&[(file, text)]);
            let e = load(d.path()).unwrap_err().to_string();
            assert!(e.starts_with(file) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn logfmt_quoting() {
        assert_eq!(quote("posta::server"), "posta::server");
        assert_eq!(quote("posta listening"), "\"posta listening\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a=\"b\"\n"), "\"a=\\\"b\\\"\\n\"");
    }
}
