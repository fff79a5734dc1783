//! `actors.ini` (posta): mailbox capacities and the concurrency of the actors that have no
//! Haraka key. Workers (`smtp.ini nodes`), delivery concurrency (`outbound.ini
//! concurrency_max`) and per-MX sessions (`outbound.ini max_connections_per_mx`) keep their
//! Haraka files; docs/tune.md lists them all in one place.

use super::{ConfigError, IniFile};

/// Capacities and concurrency per actor kind. A full mailbox makes the sender wait
/// (backpressure), it never drops a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorsConfig {
    /// `[mailbox] transaction`: body chunks waiting for one Transaction actor.
    pub transaction_mailbox: usize,
    /// `[mailbox] queue_manager`: new items, finished attempts and operator requests.
    pub queue_manager_mailbox: usize,
    /// `[mailbox] delivery`: items handed to the delivery supervisor.
    pub delivery_mailbox: usize,
    /// `[mailbox] remote_mx`: messages waiting for one remote MX's sessions.
    pub remote_mx_mailbox: usize,
    /// `[concurrency] commits`: queue commits (write + fsync + rename) at once, per process.
    pub commits: usize,
    /// `[concurrency] resolver`: DNS lookups in flight at once.
    pub resolver: usize,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        ActorsConfig {
            transaction_mailbox: 16,
            queue_manager_mailbox: 1024,
            delivery_mailbox: 1024,
            remote_mx_mailbox: 4096,
            commits: 8,
            resolver: 256,
        }
    }
}

impl ActorsConfig {
    pub fn load(f: &IniFile) -> Result<ActorsConfig, ConfigError> {
        let d = ActorsConfig::default();
        let n = |section: &str, key: &str, default: usize, max: u64| -> Result<usize, ConfigError> {
            let v = f.u64(section, key, default as u64)?;
            if v == 0 || v > max {
                return Err(f.invalid(section, key, format!("{v} is out of range (1 to {max})")));
            }
            Ok(v as usize)
        };
        Ok(ActorsConfig {
            transaction_mailbox: n("mailbox", "transaction", d.transaction_mailbox, 65_536)?,
            queue_manager_mailbox: n("mailbox", "queue_manager", d.queue_manager_mailbox, 1 << 20)?,
            delivery_mailbox: n("mailbox", "delivery", d.delivery_mailbox, 1 << 20)?,
            remote_mx_mailbox: n("mailbox", "remote_mx", d.remote_mx_mailbox, 1 << 20)?,
            commits: n("concurrency", "commits", d.commits, 1024)?,
            resolver: n("concurrency", "resolver", d.resolver, 65_536)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        let f = IniFile::parse("actors.ini", "").unwrap();
        assert_eq!(ActorsConfig::load(&f).unwrap(), ActorsConfig::default());
        let f = IniFile::parse("actors.ini", "[mailbox]\ntransaction=4\n[concurrency]\ncommits=2\n").unwrap();
        let a = ActorsConfig::load(&f).unwrap();
        assert_eq!((a.transaction_mailbox, a.commits, a.resolver), (4, 2, 256));
    }

    #[test]
    fn zero_and_junk_name_the_key() {
        let f = IniFile::parse("actors.ini", "[concurrency]\ncommits=0\n").unwrap();
        let e = ActorsConfig::load(&f).unwrap_err().to_string();
        assert!(
            e.contains("actors.ini") && e.contains("commits") && e.contains("out of range"),
            "{e}"
        );
        let f = IniFile::parse("actors.ini", "[mailbox]\nremote_mx=lots\n").unwrap();
        let e = ActorsConfig::load(&f).unwrap_err().to_string();
        assert!(e.contains("remote_mx"), "{e}");
    }
}
