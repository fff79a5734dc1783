//! The Resolver actor: MX and address lookups through hickory-resolver.
//!
//! Nameservers come from `/etc/resolv.conf`, or from `outbound.ini nameservers` (tests and
//! closed networks point it at their own DNS server).

use std::net::{IpAddr, SocketAddr};

use actix::prelude::*;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::outbound::InetPrefer;
use crate::metrics::{inc, metrics, MailboxTicket};

/// Why a lookup did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// The domain does not exist: permanent.
    #[error("No Such Domain")]
    NxDomain,
    /// Timeouts, SERVFAIL, network errors: temporary.
    #[error("DNS lookup failure: {0}")]
    Temporary(String),
}

/// What the MX lookup of a domain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records (preference, host).
    Records(Vec<(u16, String)>),
    /// No MX records: use the domain's own addresses (RFC 5321 5.1 implicit MX).
    Implicit,
}

/// Look up the MX records of a domain.
#[derive(Message)]
#[rtype(result = "Result<MxAnswer, DnsFailure>")]
pub struct ResolveMx(pub String, pub MailboxTicket);

impl ResolveMx {
    pub fn new(domain: String) -> Self {
        ResolveMx(domain, MailboxTicket::new(&metrics().resolver.mailbox))
    }
}

/// Look up a host's addresses, ordered by preference.
#[derive(Message)]
#[rtype(result = "Result<Vec<IpAddr>, DnsFailure>")]
pub struct ResolveHost(pub String, pub InetPrefer, pub MailboxTicket);

impl ResolveHost {
    pub fn new(host: String, prefer: InetPrefer) -> Self {
        ResolveHost(host, prefer, MailboxTicket::new(&metrics().resolver.mailbox))
    }
}

pub struct Resolver {
    inner: TokioResolver,
    /// Lookups in flight at once (`actors.ini [concurrency] resolver`).
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Resolver {
    /// A resolver on the given nameservers, or the system's when the list is empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Resolver, String> {
        let mut opts = ResolverOpts::default();
        opts.cache_size = 1024;
        opts.attempts = 2;
        let inner = if nameservers.is_empty() {
            let mut b = TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
            b.options_mut().cache_size = 1024;
            b.build()
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true));
            }
            let cfg = ResolverConfig::from_parts(None, vec![], group);
            let mut b = TokioResolver::builder_with_config(cfg, TokioConnectionProvider::default());
            *b.options_mut() = opts;
            b.build()
        };
        Ok(Resolver {
            inner,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(256)),
        })
    }

    /// At most `n` lookups in flight; more wait for a slot.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.slots = std::sync::Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }
}

impl Actor for Resolver {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        inc(&metrics().resolver.started);
    }
}

/// NOERROR with no records of the type asked for (NODATA). hickory also reports SERVFAIL,
/// REFUSED and friends as "no records found": those must stay temporary failures.
fn is_nodata(e: &ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    matches!(
        e.proto().map(|p| p.kind()),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError,
            ..
        })
    )
}

fn failure(e: &ResolveError) -> DnsFailure {
    if e.is_nx_domain() {
        DnsFailure::NxDomain
    } else {
        DnsFailure::Temporary(e.to_string())
    }
}

impl Handler<ResolveMx> for Resolver {
    type Result = ResponseFuture<Result<MxAnswer, DnsFailure>>;

    fn handle(&mut self, mut msg: ResolveMx, _: &mut Self::Context) -> Self::Result {
        msg.1.taken();
        let entered = std::time::Instant::now();
        inc(&metrics().resolver.messages);
        let r = self.inner.clone();
        let slots = self.slots.clone();
        Box::pin(async move {
            let _slot = slots.acquire_owned().await;
            let lookup = r.mx_lookup(fqdn(&msg.0)).await;
            metrics().resolver.handler_seconds.observe_since(entered);
            match lookup {
                Ok(l) => {
                    let v: Vec<(u16, String)> = l.iter().map(|mx| (mx.preference(), mx.exchange().to_utf8())).collect();
                    Ok(if v.is_empty() {
                        MxAnswer::Implicit
                    } else {
                        MxAnswer::Records(v)
                    })
                }
                Err(e) if is_nodata(&e) => Ok(MxAnswer::Implicit),
                Err(e) => Err(failure(&e)),
            }
        })
    }
}

impl Handler<ResolveHost> for Resolver {
    type Result = ResponseFuture<Result<Vec<IpAddr>, DnsFailure>>;

    fn handle(&mut self, mut msg: ResolveHost, _: &mut Self::Context) -> Self::Result {
        msg.2.taken();
        let r = self.inner.clone();
        let slots = self.slots.clone();
        Box::pin(async move {
            if let Ok(ip) = msg.0.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            let _slot = slots.acquire_owned().await;
            let name = fqdn(&msg.0);
            let (v6, v4) = tokio::join!(r.ipv6_lookup(name.clone()), r.ipv4_lookup(name));
            let mut six: Vec<IpAddr> = v6.iter().flat_map(|l| l.iter().map(|a| IpAddr::V6(a.0))).collect();
            let mut four: Vec<IpAddr> = v4.iter().flat_map(|l| l.iter().map(|a| IpAddr::V4(a.0))).collect();
            if six.is_empty() && four.is_empty() {
                // NXDOMAIN or NODATA for both: no address; anything else is temporary.
                return Err(match (v6, v4) {
                    (Err(e), _) | (_, Err(e)) if !is_nodata(&e) && !e.is_nx_domain() => failure(&e),
                    (Err(e), _) | (_, Err(e)) if e.is_nx_domain() => DnsFailure::NxDomain,
                    _ => DnsFailure::Temporary("no address records".into()),
                });
            }
            Ok(match msg.1 {
                InetPrefer::V4 => {
                    four.append(&mut six);
                    four
                }
                _ => {
                    six.append(&mut four);
                    six
                }
            })
        })
    }
}

/// Query names are absolute, so no search domain is ever appended.
fn fqdn(d: &str) -> String {
    if d.ends_with('.') {
        d.to_string()
    } else {
        format!("{d}.")
    }
}
