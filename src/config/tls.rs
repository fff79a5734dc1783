//! `tls.ini` for inbound TLS (the `tls` plugin): STARTTLS and implicit TLS on `smtps_port`.
//!
//! Two steps, so that reading the config stays cheap and loading keys happens where it is
//! needed: [`TlsIni::load`] reads the settings; [`TlsIni::server`] reads the key, the
//! certificates and `config/tls/` and builds the rustls server configs. A missing or broken
//! key or certificate is a [`ConfigError`] naming the file and the problem.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::{ConfigError, IniFile};

const FILE: &str = "tls.ini";

/// Which TLS versions to accept (`[main] minVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// The settings of `tls.ini` that inbound TLS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIni {
    /// `[main] key`: private key (PEM), relative to the config dir.
    pub key: PathBuf,
    /// `[main] cert`: certificate chain (PEM), relative to the config dir.
    pub cert: PathBuf,
    pub min_version: MinVersion,
    /// `[main] ciphers`: suite names (OpenSSL or IANA spelling); empty = rustls defaults.
    pub ciphers: Vec<String>,
    /// `[main] no_starttls_ports[]`.
    pub no_starttls_ports: Vec<u16>,
    /// `[no_tls_hosts]`: addresses or networks.
    pub no_tls_hosts: Vec<ipnet::IpNet>,
    /// `[main] requireAuthorized[]`: ports where a client certificate signed by `ca` is required.
    pub require_authorized: Vec<u16>,
    /// `[main] ca`: CA bundle (PEM) for client certificates.
    pub ca: Option<PathBuf>,
}

impl TlsIni {
    /// Read `tls.ini` from `dir` (a missing file gives the defaults).
    pub fn load(dir: &Path) -> Result<TlsIni, ConfigError> {
        let (f, hosts) = read_ini(dir)?;
        let min_version = match f.get("main", "minVersion").unwrap_or("TLSv1.2") {
            "TLSv1.2" => MinVersion::Tls12,
            "TLSv1.3" => MinVersion::Tls13,
            v => return Err(f.invalid("main", "minVersion", format!("'{v}' is not TLSv1.2 or TLSv1.3"))),
        };
        let ciphers = f
            .string("main", "ciphers", "")
            .split([':', ',', ' '])
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let ini = TlsIni {
            key: dir.join(f.string("main", "key", "tls_key.pem")),
            cert: dir.join(f.string("main", "cert", "tls_cert.pem")),
            min_version,
            ciphers,
            no_starttls_ports: ports(&f, "no_starttls_ports")?,
            no_tls_hosts: networks(&hosts)?,
            require_authorized: ports(&f, "requireAuthorized")?,
            ca: f.get("main", "ca").filter(|c| !c.is_empty()).map(|c| dir.join(c)),
        };
        if !ini.require_authorized.is_empty() && ini.ca.is_none() {
            return Err(f.invalid(
                "main",
                "requireAuthorized",
                "needs [main] ca to verify client certificates",
            ));
        }
        // Checked here too so that a bad name fails without any key on disk.
        suites(&ini.ciphers)?;
        Ok(ini)
    }

    /// Load keys and certificates and build the server configs.
    pub fn server(&self, dir: &Path) -> Result<InboundTls, ConfigError> {
        let suites = suites(&self.ciphers)?;
        let provider = Arc::new(CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        });
        let resolver = Arc::new(self.resolver(dir, &provider)?);
        let versions: &[&SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let build = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let b = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| ConfigError::new(FILE, Some("[main] ciphers".into()), e.to_string()))?;
            let b = match verifier {
                Some(v) => b.with_client_cert_verifier(v),
                None => b.with_no_client_auth(),
            };
            let mut cfg = b.with_cert_resolver(resolver.clone());
            // Haraka's honorCipherOrder=true: our order of `ciphers`, not the client's.
            cfg.ignore_client_order = true;
            Ok::<_, ConfigError>(Arc::new(cfg))
        };
        let (optional, required) = match &self.ca {
            Some(ca) => {
                let (opt, req) = client_verifiers(ca, &provider)?;
                (build(Some(opt))?, Some(build(Some(req))?))
            }
            None => (build(None)?, None),
        };
        Ok(InboundTls {
            optional,
            required,
            require_authorized: self.require_authorized.clone(),
        })
    }

    /// The default certificate plus the `config/tls/` bundles, chosen by SNI.
    fn resolver(&self, dir: &Path, provider: &CryptoProvider) -> Result<SniResolver, ConfigError> {
        let mut named = Vec::new();
        for path in pem_files(&dir.join("tls"))? {
            let key = load_bundle(&path, &path, dir, provider)?;
            let names = cert_names(&key.cert[0], &path, dir)?;
            named.extend(names.into_iter().map(|n| (n, key.clone())));
        }
        let both_missing = !self.key.exists() && !self.cert.exists();
        let default = match named.first() {
            Some((_, k)) if both_missing => k.clone(),
            _ => load_bundle(&self.key, &self.cert, dir, provider)?,
        };
        Ok(SniResolver { default, named })
    }
}

/// `tls.ini` as an ini file, with the entries of `[no_tls_hosts]` apart: they are addresses,
/// which the ini reader would take apart at the dots, and may have no `=value`.
pub fn read_ini(dir: &Path) -> Result<(IniFile, Vec<String>), ConfigError> {
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ConfigError::new(FILE, None, format!("cannot read: {e}"))),
    };
    let (rest, hosts) = split_section(&text, "no_tls_hosts");
    Ok((IniFile::parse(FILE, &rest)?, hosts))
}

/// The built rustls configs: one per client-certificate policy.
#[derive(Debug, Clone)]
pub struct InboundTls {
    /// Client certificates optional (verified against `ca` when one is set).
    optional: Arc<ServerConfig>,
    /// Client certificates required (`requireAuthorized[]` ports).
    required: Option<Arc<ServerConfig>>,
    require_authorized: Vec<u16>,
}

impl InboundTls {
    /// The server config for a connection to local `port`.
    pub fn for_port(&self, port: u16) -> Arc<ServerConfig> {
        match &self.required {
            Some(r) if self.require_authorized.contains(&port) => r.clone(),
            _ => self.optional.clone(),
        }
    }
}

/// Picks the certificate for the name the client asked for (SNI): an exact name first, then
/// a wildcard (`*.example.com` covers `a.example.com`, not `a.b.example.com`), else the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Lower-case names (CN and DNS SANs), in file order.
    named: Vec<(String, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        let exact = self.named.iter().find(|(n, _)| *n == name);
        let wild = || self.named.iter().find(|(n, _)| Some(n) == wildcard.as_ref());
        exact.or_else(wild).map(|(_, k)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|n| self.find(n));
        Some(found.unwrap_or_else(|| self.default.clone()))
    }
}

/// Take the entries of `[section]` out of ini text (the part before any `=`).
fn split_section(text: &str, section: &str) -> (String, Vec<String>) {
    let mut rest = String::new();
    let mut entries = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            inside = t[1..t.len() - 1].trim().eq_ignore_ascii_case(section);
            if inside {
                continue;
            }
        }
        if !inside {
            rest.push_str(line);
            rest.push('\n');
            continue;
        }
        let entry = t.split(['=', ';', '#']).next().unwrap_or("").trim();
        if !entry.is_empty() {
            entries.push(entry.to_string());
        }
    }
    (rest, entries)
}

fn networks(entries: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    entries
        .iter()
        .map(|e| {
            e.parse::<ipnet::IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        FILE,
                        Some("[no_tls_hosts]".into()),
                        format!("'{e}' is not an IP address or network"),
                    )
                })
        })
        .collect()
}

fn ports(f: &IniFile, key: &str) -> Result<Vec<u16>, ConfigError> {
    f.list("main", key)
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        })
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| f.invalid("main", key, format!("'{p}' is not a port number")))
        })
        .collect()
}

/// OpenSSL spelling of the suites rustls (ring) implements; TLS 1.3 names are the same in both.
const OPENSSL_NAMES: [(&str, &str); 6] = [
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    ("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    ("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The IANA name of a suite (`TLS_AES_128_GCM_SHA256`), for logs and `ciphers`.
pub fn suite_name(s: SupportedCipherSuite) -> String {
    let raw = s
        .suite()
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("{:?}", s.suite()));
    match raw.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => raw,
    }
}

/// The suites named in `ciphers` (all of ring's when empty); an unknown name is an error.
fn suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, ConfigError> {
    let all = rustls::crypto::ring::default_provider().cipher_suites;
    if names.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in names {
        let iana = OPENSSL_NAMES
            .iter()
            .find(|(o, _)| o.eq_ignore_ascii_case(name))
            .map(|(_, i)| i.to_string())
            .unwrap_or_else(|| name.to_ascii_uppercase());
        let Some(s) = all.iter().find(|s| suite_name(**s) == iana) else {
            let known: Vec<String> = all.iter().map(|s| suite_name(*s)).collect();
            return Err(ConfigError::new(
                FILE,
                Some("[main] ciphers".into()),
                format!(
                    "unknown or unsupported cipher '{name}' (supported: {})",
                    known.join(" ")
                ),
            ));
        };
        out.push(*s);
    }
    Ok(out)
}

/// A file's name for messages: relative to the config dir when it is inside it.
fn shown(path: &Path, dir: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// The `*.pem` files under `dir`, recursively, sorted; none when `dir` does not exist.
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(pem_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "pem") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A private key and its certificate chain (they may be the same file), checked to match.
fn load_bundle(
    key_path: &Path,
    cert_path: &Path,
    dir: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let err = |p: &Path, problem: String| ConfigError::new(&shown(p, dir), None, problem);
    let cert_pem = std::fs::read(cert_path).map_err(|e| err(cert_path, format!("cannot read certificate: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert_path, format!("broken PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(err(
            cert_path,
            "no certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    let key_pem = std::fs::read(key_path).map_err(|e| err(key_path, format!("cannot read private key: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err(key_path, format!("no usable private key: {e}")))?;
    cert_names(&chain[0], cert_path, dir)?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| err(key_path, format!("key does not fit the certificate: {e}")))
}

/// The certificate's subject CN and DNS SANs, lower-case; logs a warning when it has expired.
fn cert_names(cert: &CertificateDer<'_>, path: &Path, dir: &Path) -> Result<Vec<String>, ConfigError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| ConfigError::new(&shown(path, dir), None, format!("broken certificate: {e}")))?;
    let mut names: Vec<String> = x
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(String::from)
        .collect();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if !x.validity().is_valid() {
        tracing::warn!(file = %shown(path, dir), not_after = %x.validity().not_after, "TLS certificate is not valid now (expired or not yet valid)");
    }
    let mut names: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
    names.dedup();
    Ok(names)
}

type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The CA certificates of a PEM bundle, for the config error of `file`, `[main] ca`.
pub fn load_roots(file: &str, ca: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let key = Some("[main] ca".to_string());
    let err = |p: String| ConfigError::new(file, key.clone(), format!("{}: {p}", ca.display()));
    let pem = std::fs::read(ca).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| err(format!("broken PEM certificate: {e}")))?;
        roots.add(c).map_err(|e| err(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no CA certificate found".into()));
    }
    Ok(roots)
}

/// Client-certificate verifiers against the `ca` bundle: (optional, required).
fn client_verifiers(ca: &Path, provider: &Arc<CryptoProvider>) -> Result<(Verifier, Verifier), ConfigError> {
    let err = |p: String| ConfigError::new(FILE, Some("[main] ca".to_string()), format!("{}: {p}", ca.display()));
    let roots = Arc::new(load_roots(FILE, ca)?);
    let builder = || WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    let optional = builder()
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let required = builder().build().map_err(|e| err(e.to_string()))?;
    Ok((optional, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tls_hosts_section_and_defaults() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(FILE),
            "[main]\nno_starttls_ports[]=2525\n\n[no_tls_hosts]\n192.0.2.7\n10.0.0.0/8=true\n::1\n",
        )
        .unwrap();
        let t = TlsIni::load(d.path()).unwrap();
        assert_eq!(t.no_starttls_ports, vec![2525]);
        assert_eq!(t.no_tls_hosts.len(), 3);
        assert_eq!(t.key, d.path().join("tls_key.pem"));
        assert_eq!(t.min_version, MinVersion::Tls12);
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "[main]\nciphers=RC4-MD5\n").unwrap();
        let e = TlsIni::load(d.path()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[main] ciphers"));
        std::fs::write(d.path().join(FILE), "[main]\nminVersion=SSLv3\n").unwrap();
        assert_eq!(
            TlsIni::load(d.path()).unwrap_err().key.as_deref(),
            Some("[main] minVersion")
        );
        std::fs::write(d.path().join(FILE), "[no_tls_hosts]\nnot-an-ip\n").unwrap();
        assert!(TlsIni::load(d.path()).unwrap_err().problem.contains("not-an-ip"));
    }

    #[test]
    fn cipher_names_in_both_spellings() {
        let s = suites(&["ECDHE-RSA-AES128-GCM-SHA256".into(), "TLS_AES_256_GCM_SHA384".into()]).unwrap();
        assert_eq!(s.len(), 2);
    }

    fn key(name: &str) -> Arc<CertifiedKey> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let der = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(CertifiedKey::from_der(vec![ck.cert.der().clone()], der, &provider).unwrap())
    }

    #[test]
    fn sni_exact_then_wildcard_then_nothing() {
        let (exact, wild) = (key("a.example.test"), key("*.example.test"));
        let r = SniResolver {
            default: key("mx.test"),
            named: vec![
                ("*.example.test".into(), wild.clone()),
                ("a.example.test".into(), exact.clone()),
            ],
        };
        assert!(Arc::ptr_eq(&r.find("A.EXAMPLE.test").unwrap(), &exact));
        assert!(Arc::ptr_eq(&r.find("b.example.test").unwrap(), &wild));
        assert!(r.find("b.c.example.test").is_none());
        assert!(r.find("example.test").is_none());
        assert!(r.find("").is_none());
    }

    #[test]
    fn missing_key_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = TlsIni::load(d.path()).unwrap().server(d.path()).unwrap_err();
        assert_eq!(e.file, "tls_cert.pem");
    }
}
