//! Reading Haraka-style `.ini` files with the `config` crate, into sections of string values.
//!
//! Haraka rules kept here: keys before any `[section]` belong to `[main]`; `key[]=` lines
//! build a list; booleans accept `true|yes|ok|enabled|on|1` and their opposites.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// One ini file: section → key → values (more than one for `key[]` lists).
#[derive(Debug, Clone, Default)]
pub struct IniFile {
    /// File name relative to the config dir, for error messages.
    pub name: String,
    sections: HashMap<String, HashMap<String, Vec<String>>>,
}

const LIST_MARK: &str = "[]__";

impl IniFile {
    /// Load `dir/name`; a missing file is an empty one (every key takes its default).
    pub fn load(dir: &Path, name: &str) -> Result<IniFile, ConfigError> {
        let path: PathBuf = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ConfigError::new(name, None, format!("cannot read: {e}"))),
        };
        Self::parse(name, &text)
    }

    /// Parse ini text.
    pub fn parse(name: &str, text: &str) -> Result<IniFile, ConfigError> {
        let prepared = mark_lists(text);
        let built = config::Config::builder()
            .add_source(config::File::from_str(&prepared, config::FileFormat::Ini))
            .build()
            .map_err(|e| ConfigError::new(name, None, format!("not a valid ini file: {e}")))?;
        let map = built
            .try_deserialize::<HashMap<String, config::Value>>()
            .map_err(|e| ConfigError::new(name, None, format!("not a valid ini file: {e}")))?;
        let mut file = IniFile {
            name: name.to_string(),
            sections: HashMap::new(),
        };
        let mut entries: Vec<(String, String, String)> = Vec::new();
        for (key, value) in map {
            match value.clone().into_table() {
                Ok(table) => entries.extend(table.into_iter().map(|(k, v)| (key.clone(), k, v.to_string()))),
                Err(_) => entries.push(("main".into(), key, value.to_string())),
            }
        }
        // Keep `key[]` elements in file order (the marker carries the line number).
        entries.sort_by_key(|(_, k, _)| list_index(k));
        for (section, key, value) in entries {
            file.insert(&section, &key, value);
        }
        Ok(file)
    }

    fn insert(&mut self, section: &str, key: &str, value: String) {
        let key = match key.find(LIST_MARK) {
            Some(i) => &key[..i],
            None => key,
        };
        self.sections
            .entry(section.to_ascii_lowercase())
            .or_default()
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value);
    }

    /// The raw string value, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .and_then(|s| s.get(&key.to_ascii_lowercase()))
            .and_then(|v| v.last())
            .map(|s| s.trim())
    }

    /// A `key[]` list (or a single `key=` value as a one-element list).
    pub fn list(&self, section: &str, key: &str) -> Vec<String> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .and_then(|s| s.get(&key.to_ascii_lowercase()))
            .map(|v| {
                v.iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A comma-separated value, split and trimmed (empty items dropped); `None` when the key
    /// is absent, `Some(empty)` for an empty value.
    fn items(&self, section: &str, key: &str) -> Option<Vec<String>> {
        self.get(section, key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }

    /// A comma-separated list of ports (`587, 465`); `None` when the key is absent.
    pub fn ports(&self, section: &str, key: &str) -> Result<Option<Vec<u16>>, ConfigError> {
        let Some(items) = self.items(section, key) else {
            return Ok(None);
        };
        items
            .iter()
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| self.invalid(section, key, format!("'{p}' is not a port")))
            })
            .collect::<Result<Vec<u16>, ConfigError>>()
            .map(Some)
    }

    /// A comma-separated list of addresses or CIDRs ([`super::parse_net`]); `None` when the
    /// key is absent.
    pub fn nets(&self, section: &str, key: &str) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
        let Some(items) = self.items(section, key) else {
            return Ok(None);
        };
        items
            .iter()
            .map(|s| {
                super::parse_net(s)
                    .ok_or_else(|| self.invalid(section, key, format!("'{s}' is not an address or CIDR")))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
            .map(Some)
    }

    /// Every section name (lower-cased).
    pub fn sections(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sections.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every key of a section.
    pub fn keys(&self, section: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .sections
            .get(&section.to_ascii_lowercase())
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn err(&self, section: &str, key: &str, problem: String) -> ConfigError {
        ConfigError::new(&self.name, Some(format!("[{section}] {key}")), problem)
    }

    /// A string with a default.
    pub fn string(&self, section: &str, key: &str, default: &str) -> String {
        self.get(section, key).unwrap_or(default).to_string()
    }

    /// An unsigned integer with a default.
    pub fn u64(&self, section: &str, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(section, key) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| self.err(section, key, format!("'{v}' is not a non-negative integer"))),
        }
    }

    /// A signed integer with a default (Haraka uses -1 for "never" in places).
    pub fn i64(&self, section: &str, key: &str, default: i64) -> Result<i64, ConfigError> {
        match self.get(section, key) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| self.err(section, key, format!("'{v}' is not an integer"))),
        }
    }

    /// A non-negative number (fractions allowed) with a default.
    pub fn f64(&self, section: &str, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(section, key) {
            None | Some("") => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(self.err(section, key, format!("'{v}' is not a non-negative number"))),
            },
        }
    }

    /// A boolean with a default, with Haraka's spellings.
    pub fn bool(&self, section: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(section, key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "true" | "yes" | "ok" | "enabled" | "on" | "1" => Ok(true),
                "false" | "no" | "disabled" | "off" | "0" | "" => Ok(false),
                // Haraka files use numbers as switches too (`check_literal_mismatch=2`).
                n if n.parse::<u32>().is_ok() => Ok(true),
                _ => Err(self.err(section, key, format!("'{v}' is not a boolean (true/false)"))),
            },
        }
    }

    /// A value that must be one of `choices`.
    pub fn choice(&self, section: &str, key: &str, choices: &[&str], default: &str) -> Result<String, ConfigError> {
        let v = self.string(section, key, default).to_ascii_lowercase();
        if choices.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(self.err(section, key, format!("'{v}' is not one of {}", choices.join(", "))))
        }
    }

    /// An error for a key whose value parsed but is out of range.
    pub fn invalid(&self, section: &str, key: &str, problem: impl Into<String>) -> ConfigError {
        self.err(section, key, problem.into())
    }
}

fn list_index(key: &str) -> usize {
    key.find(LIST_MARK)
        .and_then(|i| key[i + LIST_MARK.len()..].parse().ok())
        .unwrap_or(0)
}

/// Rewrite `key[]=v` lines as `key[]__N=v` so that the ini reader keeps every element.
fn mark_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut n = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match trimmed.split_once('=') {
            Some((k, v)) if k.trim_end().ends_with("[]") && !trimmed.starts_with(['#', ';']) => {
                let k = k.trim_end();
                out.push_str(&format!("{}{LIST_MARK}{n}={v}\n", &k[..k.len() - 2]));
                n += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_and_network_lists() {
        let f = IniFile::parse(
            "x.ini",
            "[a]\np=587, 465,\nn=10.0.0.0/8, ::1\ne=\nbad=25,smtp\nnet=10.0.0.0/33\n",
        )
        .unwrap();
        assert_eq!(f.ports("a", "p").unwrap(), Some(vec![587, 465]));
        assert_eq!(f.ports("a", "missing").unwrap(), None);
        assert_eq!(f.ports("a", "e").unwrap(), Some(vec![]));
        assert_eq!(f.nets("a", "n").unwrap().unwrap().len(), 2);
        let e = f.ports("a", "bad").unwrap_err().to_string();
        assert!(
            e.contains("x.ini") && e.contains("bad") && e.contains("'smtp' is not a port"),
            "{e}"
        );
        let e = f.nets("a", "net").unwrap_err().to_string();
        assert!(e.contains("'10.0.0.0/33' is not an address or CIDR"), "{e}");
    }

    #[test]
    fn sections_lists_and_main() {
        let f = IniFile::parse(
            "x.ini",
            "top=1\n[main]\nlisten=127.0.0.1:25\n[message]\ngreeting[]=a\ngreeting[]=b\n[max]\nbytes=10\n",
        )
        .unwrap();
        assert_eq!(f.get("main", "top"), Some("1"));
        assert_eq!(f.get("main", "listen"), Some("127.0.0.1:25"));
        assert_eq!(f.list("message", "greeting"), vec!["a", "b"]);
        assert_eq!(f.u64("max", "bytes", 0).unwrap(), 10);
        assert_eq!(f.u64("max", "other", 7).unwrap(), 7);
    }

    #[test]
    fn errors_name_file_and_key() {
        let f = IniFile::parse("connection.ini", "[max]\nbytes=lots\n").unwrap();
        let e = f.u64("max", "bytes", 0).unwrap_err().to_string();
        assert!(
            e.contains("connection.ini") && e.contains("[max] bytes") && e.contains("lots"),
            "{e}"
        );
        let f = IniFile::parse("smtp.ini", "[main]\nsmtputf8=maybe\n").unwrap();
        assert!(f.bool("main", "smtputf8", true).is_err());
    }

    #[test]
    fn broken_file() {
        assert!(IniFile::parse("smtp.ini", "[main\nx=1\n").is_err());
    }
}
