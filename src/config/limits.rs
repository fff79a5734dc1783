//! `connection.ini` keys for connection limits (`[max]`) and slow-client deadlines
//! (`[deadline]`), both posta's own. Documented in `docs/config.md`.

use std::time::Duration;

use super::{ConfigError, IniFile};
use crate::limits::{LimitsConfig, Rate};
use crate::protocol::deadline::DeadlineConfig;

/// `[max] connections`, `connections_per_ip`, `connection_rate`.
pub fn load_limits(f: &IniFile) -> Result<LimitsConfig, ConfigError> {
    let d = LimitsConfig::default();
    let rate = match f.get("max", "connection_rate") {
        None => d.rate,
        Some(v) => Rate::parse(v).map_err(|p| f.invalid("max", "connection_rate", p))?,
    };
    let exempt = f.nets("max", "connections_exempt")?.unwrap_or(d.exempt);
    Ok(LimitsConfig {
        total: usize_of(f.u64("max", "connections", d.total as u64)?),
        per_ip: usize_of(f.u64("max", "connections_per_ip", d.per_ip as u64)?),
        rate,
        exempt,
    })
}

/// `[deadline] command`, `data`, `data_min_rate`, `data_grace`, `session` (seconds; 0 = off).
pub fn load_deadlines(f: &IniFile) -> Result<DeadlineConfig, ConfigError> {
    let d = DeadlineConfig::default();
    let secs = |key: &str, default: Option<Duration>| -> Result<Option<Duration>, ConfigError> {
        let n = f.u64("deadline", key, default.map(|x| x.as_secs()).unwrap_or(0))?;
        Ok((n > 0).then(|| Duration::from_secs(n)))
    };
    Ok(DeadlineConfig {
        command: secs("command", d.command)?,
        data: secs("data", d.data)?,
        data_min_rate: f.u64("deadline", "data_min_rate", d.data_min_rate)?,
        data_grace: Duration::from_secs(f.u64("deadline", "data_grace", d.data_grace.as_secs())?),
        session: secs("session", d.session)?,
    })
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(text: &str) -> IniFile {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("connection.ini"), text).unwrap();
        IniFile::load(d.path(), "connection.ini").unwrap()
    }

    #[test]
    fn defaults() {
        let f = ini("");
        assert_eq!(load_limits(&f).unwrap(), LimitsConfig::default());
        assert_eq!(load_deadlines(&f).unwrap(), DeadlineConfig::default());
    }

    #[test]
    fn values_and_errors() {
        let f = ini(
            "[max]\nconnections=100\nconnections_per_ip=0\nconnection_rate=10/1m\n[deadline]\ncommand=0\nsession=600\n",
        );
        let l = load_limits(&f).unwrap();
        assert_eq!((l.total, l.per_ip), (100, 0));
        assert_eq!(l.rate.unwrap().period, Duration::from_secs(60));
        let d = load_deadlines(&f).unwrap();
        assert_eq!(d.command, None);
        assert_eq!(d.session, Some(Duration::from_secs(600)));
        let l = load_limits(&ini("[max]\nconnections_exempt=10.0.0.0/8, 192.0.2.1\n")).unwrap();
        assert_eq!(l.exempt.len(), 2);
        assert!(load_limits(&ini("[max]\nconnections_exempt=\n"))
            .unwrap()
            .exempt
            .is_empty());
        let e = load_limits(&ini("[max]\nconnections_exempt=nowhere\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[max] connections_exempt"));
        let e = load_limits(&ini("[max]\nconnection_rate=lots\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[max] connection_rate"));
    }
}
