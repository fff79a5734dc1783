//! A real DNS server inside the test process: 127.0.0.1:<ephemeral port>, UDP and TCP, built on
//! hickory-server with a small request handler that answers from a [`Zone`].
//!
//! ```ignore
//! let dns = DnsServer::start(Zone::new().mx("remote.test", 10, "mx.remote.test").a("mx.remote.test", [127, 0, 0, 1]));
//! // outbound.ini: nameservers = {dns.addr()}
//! ```
//!
//! Names with records answer NOERROR (empty answer = NODATA for other types), names without
//! records answer NXDOMAIN with an SOA, `servfail` names answer SERVFAIL.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// TTL of every answer: short, so a test that changes the zone sees the change soon.
const TTL: u32 = 1;

/// The records the server answers with. Builder methods take host names with or without the
/// final dot; matching ignores case.
#[derive(Clone, Default)]
pub struct Zone {
    records: HashMap<String, Vec<Record>>,
    /// Names answered with SERVFAIL: for every type (`None`) or for the listed types.
    servfail: HashMap<String, Option<HashSet<RecordType>>>,
}

/// `name` as a lower-case absolute name (`mx.test.`).
fn key(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

fn name(n: &str) -> Name {
    Name::from_str(&key(n)).unwrap_or_else(|e| panic!("bad DNS name {n:?}: {e}"))
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    fn add(mut self, owner: &str, data: RData) -> Zone {
        let rec = Record::from_rdata(name(owner), TTL, data);
        self.records.entry(key(owner)).or_default().push(rec);
        self
    }

    /// `domain MX pref host`.
    pub fn mx(self, domain: &str, pref: u16, host: &str) -> Zone {
        self.add(domain, RData::MX(MX::new(pref, name(host))))
    }

    /// `host A ip`.
    pub fn a(self, host: &str, ip: impl Into<Ipv4Addr>) -> Zone {
        self.add(host, RData::A(A(ip.into())))
    }

    /// `host AAAA ip`.
    pub fn aaaa(self, host: &str, ip: impl Into<Ipv6Addr>) -> Zone {
        self.add(host, RData::AAAA(AAAA(ip.into())))
    }

    /// `host TXT text` (makes a name exist without address or MX records).
    pub fn txt(self, host: &str, text: &str) -> Zone {
        self.add(host, RData::TXT(TXT::new(vec![text.to_string()])))
    }

    /// RFC 7505 null MX: `domain MX 0 .`.
    pub fn null_mx(self, domain: &str) -> Zone {
        self.add(domain, RData::MX(MX::new(0, Name::root())))
    }

    /// Answer SERVFAIL for every query of `domain`.
    pub fn servfail(mut self, domain: &str) -> Zone {
        self.servfail.insert(key(domain), None);
        self
    }

    /// Answer SERVFAIL for queries of `domain` of type `rtype` only (`"MX"`, `"A"`, `"AAAA"`…);
    /// other types are answered from the records.
    pub fn servfail_type(mut self, domain: &str, rtype: &str) -> Zone {
        let t = RecordType::from_str(rtype).unwrap_or_else(|_| panic!("bad record type {rtype:?}"));
        // An entry of `None` already answers SERVFAIL for every type.
        if let Some(set) = self.servfail.entry(key(domain)).or_insert_with(|| Some(HashSet::new())) {
            set.insert(t);
        }
        self
    }

    fn answer(&self, qname: &str, qtype: RecordType) -> Answer {
        let qname = key(qname);
        if let Some(types) = self.servfail.get(&qname) {
            if types.as_ref().is_none_or(|t| t.contains(&qtype)) {
                return Answer::ServFail;
            }
        }
        match self.records.get(&qname) {
            None => Answer::NxDomain,
            Some(recs) => Answer::Records(
                recs.iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                    .cloned()
                    .collect(),
            ),
        }
    }
}

enum Answer {
    Records(Vec<Record>),
    NxDomain,
    ServFail,
}

/// One query the server saw: name (lower case, absolute) and type (`"MX"`, `"A"`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub rtype: String,
}

struct Shared {
    zone: Mutex<Zone>,
    queries: Mutex<Vec<Query>>,
}

struct ZoneHandler(Arc<Shared>);

/// The SOA of a negative answer: owned by the query's last label, so the resolver may cache
/// the negative answer for at most `TTL` seconds (RFC 2308).
fn soa_for(qname: &str) -> Record {
    let tld = key(qname)
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_string();
    let zone = if tld.is_empty() { Name::root() } else { name(&tld) };
    let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 3600, 600, 86400, TTL);
    Record::from_rdata(zone, TTL, RData::SOA(soa))
}

impl ZoneHandler {
    async fn respond<R: ResponseHandler>(&self, request: &Request, mut handle: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let query = match request.request_info() {
            Ok(info) => info.query.clone(),
            Err(_) => {
                let resp = builder.error_msg(request.header(), ResponseCode::FormErr);
                return send(&mut handle, resp, request.header()).await;
            }
        };
        let qname = query.name().to_string();
        let qtype = query.query_type();
        self.0.queries.lock().unwrap().push(Query {
            name: key(&qname),
            rtype: qtype.to_string(),
        });
        let answer = self.0.zone.lock().unwrap().answer(&qname, qtype);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        match answer {
            Answer::ServFail => {
                let resp = builder.error_msg(request.header(), ResponseCode::ServFail);
                send(&mut handle, resp, request.header()).await
            }
            Answer::NxDomain => {
                header.set_response_code(ResponseCode::NXDomain);
                let soa = [soa_for(&qname)];
                let resp = builder.build(header, [], [], soa.iter(), []);
                send(&mut handle, resp, &header).await
            }
            Answer::Records(recs) if recs.is_empty() => {
                let soa = [soa_for(&qname)];
                let resp = builder.build(header, [], [], soa.iter(), []);
                send(&mut handle, resp, &header).await
            }
            Answer::Records(recs) => {
                let resp = builder.build(header, recs.iter(), [], [], []);
                send(&mut handle, resp, &header).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    resp: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    header: &Header,
) -> ResponseInfo {
    match handle.send_response(resp).await {
        Ok(info) => info,
        Err(_) => ResponseInfo::from(*header),
    }
}

// `RequestHandler` is an `async_trait` trait; this is the signature the macro would write.
impl RequestHandler for ZoneHandler {
    fn handle_request<'life0, 'life1, 'async_trait, R>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.respond(request, response_handle))
    }
}

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Bind UDP and TCP on the same ephemeral port of 127.0.0.1 and serve `zone` on its own
    /// thread and tokio runtime.
    pub fn start(zone: Zone) -> DnsServer {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().unwrap();
        let shared = Arc::new(Shared {
            zone: Mutex::new(zone),
            queries: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = ZoneHandler(shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("test-dns-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("dns runtime");
                rt.block_on(async move {
                    let mut server = ServerFuture::new(handler);
                    server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
                    server.register_listener(tokio::net::TcpListener::from_std(tcp).unwrap(), Duration::from_secs(10));
                    let _ = stopped.await;
                    server.shutdown_token().cancel();
                });
            })
            .expect("spawn dns thread");
        DnsServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, for `outbound.ini nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change the zone while running (answers have a 1 s TTL).
    pub fn update(&self, f: impl FnOnce(Zone) -> Zone) {
        let mut z = self.shared.zone.lock().unwrap();
        *z = f(std::mem::take(&mut *z));
    }

    /// Every query seen so far, in order.
    pub fn queries(&self) -> Vec<Query> {
        self.shared.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1 (retried when the TCP
/// side of the port is taken).
fn bind_pair() -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}
