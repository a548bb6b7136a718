//! The filtering proxy the supervisor runs on the host for a cell whose policy allows
//! names: HTTP `CONNECT` (any TCP, TLS passes through undecrypted) and plain HTTP in
//! absolute form, parsed by hyper. It listens on a unix socket that is bound into the
//! cell, where a forwarder of the cell (`sandbox::forward`) serves it on loopback.
//!
//! For each connection it checks the name against the policy, resolves the name
//! itself (the cell has no DNS), checks every address it got, and connects to an
//! address it checked: there is no second resolution to rebind. What it allowed and
//! refused goes to the verdict ([`NetworkReport`]).

use super::policy::{NetPolicy, literal_ip, normalize_name};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections served at once; more wait for a free slot.
const MAX_CONCURRENT: usize = 256;
/// Entries listed of each list of a report; the rest is counted in `truncated`.
const MAX_LISTED: usize = 256;
/// Entries the proxy keeps of each list (a session cell's proxy lives long): the
/// oldest go first, counted in `truncated` of a report that asks for them.
const MAX_KEPT: usize = 4096;
/// Buffer of each direction of a tunnel.
const COPY_BUFFER: usize = 64 << 10;
/// How long a connect to an upstream address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Names and the addresses they resolve to, for tests only: read by the supervisor
/// from its own environment (which no cell can set), and only by a debug build; a
/// release build resolves every name through the system's resolver.
#[cfg(debug_assertions)]
pub const TEST_RESOLVE_ENV: &str = "NIXCELL_TEST_RESOLVE";

/// One connection the proxy made for the cell.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Connection {
    /// The name (or literal address) the cell asked for.
    pub host: String,
    pub port: u16,
    /// The address the proxy checked and connected to.
    pub address: String,
    /// Bytes from the upstream to the cell.
    pub bytes_in: u64,
    /// Bytes from the cell to the upstream.
    pub bytes_out: u64,
}

/// A connection the policy refused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Denied {
    pub host: String,
    pub port: u16,
    pub reason: String,
    /// The address refused, when the name passed and an address it resolves to (or
    /// the literal asked for) did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The verdict's `network`: the policy and what the cell did with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NetworkReport {
    /// "none" (loopback only, no proxy) or "proxy".
    pub mode: String,
    /// The allow entries in force.
    pub allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    pub connections: Vec<Connection>,
    pub denied: Vec<Denied>,
    /// Connections and refusals past the first entries of each list, not listed.
    #[serde(default)]
    pub truncated: u64,
}

impl NetworkReport {
    /// The report of a policy before anything was asked.
    pub fn of(policy: &NetPolicy) -> NetworkReport {
        NetworkReport {
            mode: policy.mode().to_string(),
            allowed: policy.allow.iter().map(|e| e.to_string()).collect(),
            deny: policy.deny.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }
}

struct Conn {
    host: String,
    port: u16,
    address: SocketAddr,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

/// What the proxy did, each entry numbered in one sequence (see [`Proxy::mark`]).
#[derive(Default)]
struct Log {
    /// The number the next entry gets: the entries logged so far.
    next: u64,
    conns: std::collections::VecDeque<(u64, Conn)>,
    denied: std::collections::VecDeque<(u64, Denied)>,
}

impl Log {
    fn seq(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    fn conn(&mut self, c: Conn) {
        let n = self.seq();
        self.conns.push_back((n, c));
        if self.conns.len() > MAX_KEPT {
            self.conns.pop_front();
        }
    }

    fn deny(&mut self, d: Denied) {
        let n = self.seq();
        self.denied.push_back((n, d));
        if self.denied.len() > MAX_KEPT {
            self.denied.pop_front();
        }
    }
}

struct State {
    policy: NetPolicy,
    own: Vec<IpAddr>,
    overrides: Vec<(String, Vec<IpAddr>)>,
    log: Mutex<Log>,
}

/// A bound proxy: its socket exists (to be bound into the cell); [`Proxy::start`]
/// serves it on the caller's runtime.
pub struct Proxy {
    dir: tempfile::TempDir,
    listener: Option<std::os::unix::net::UnixListener>,
    state: Arc<State>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The socket's file name in its private directory.
const SOCKET_NAME: &str = "proxy.sock";

/// The host's own addresses (every interface's).
fn own_addresses() -> Vec<IpAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter_map(|i| {
        let a = i.address?;
        a.as_sockaddr_in()
            .map(|s| IpAddr::V4(s.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
    })
    .collect()
}

#[cfg(debug_assertions)]
fn test_overrides() -> Vec<(String, Vec<IpAddr>)> {
    let Ok(v) = std::env::var(TEST_RESOLVE_ENV) else {
        return Vec::new();
    };
    v.split(',')
        .filter_map(|pair| {
            let (name, ip) = pair.split_once('=')?;
            Some((normalize_name(name)?, vec![ip.trim().parse().ok()?]))
        })
        .collect()
}

#[cfg(not(debug_assertions))]
fn test_overrides() -> Vec<(String, Vec<IpAddr>)> {
    Vec::new()
}

impl Proxy {
    /// Binds the proxy's socket in a new private directory. Started as root, the
    /// socket is made connectable by the cell's unprivileged identity: only the mount
    /// in the cell reaches it (its directory is root's, mode 0700).
    pub fn bind(policy: NetPolicy) -> std::io::Result<Proxy> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(".nixcell-net-")
            .tempdir_in("/tmp")?;
        let path = dir.path().join(SOCKET_NAME);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        Ok(Proxy {
            dir,
            listener: Some(listener),
            state: Arc::new(State {
                policy,
                own: own_addresses(),
                overrides: test_overrides(),
                log: Mutex::new(Log::default()),
            }),
            task: None,
        })
    }

    /// The socket on the host.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(SOCKET_NAME)
    }

    /// Removes the socket's name and directory from the host once the cell has it
    /// mounted (the mount holds the socket, which keeps serving): a holder killed
    /// later leaves nothing of it behind.
    pub fn unlink(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.socket())?;
        std::fs::remove_dir(self.dir.path())
    }

    /// Serves the socket on the current tokio runtime until [`Proxy::report`].
    pub fn start(&mut self) -> std::io::Result<()> {
        let Some(std_listener) = self.listener.take() else {
            return Ok(());
        };
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let state = self.state.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    drop(permit);
                });
            }
        }));
        Ok(())
    }

    /// What the cell did: the connections (bytes counted so far) and the refusals.
    pub fn report(&self) -> NetworkReport {
        self.report_since(0)
    }

    /// Where the proxy's log is now: [`Proxy::report_since`] of it lists what came
    /// after.
    pub fn mark(&self) -> u64 {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next
    }

    /// The connections opened and the refusals made since `mark` (bytes counted so
    /// far).
    pub fn report_since(&self, mark: u64) -> NetworkReport {
        let log = self.state.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = NetworkReport::of(&self.state.policy);
        r.connections = log
            .conns
            .iter()
            .filter(|(n, _)| *n >= mark)
            .take(MAX_LISTED)
            .map(|(_, c)| Connection {
                host: c.host.clone(),
                port: c.port,
                address: c.address.to_string(),
                bytes_in: c.bytes_in.load(Ordering::Relaxed),
                bytes_out: c.bytes_out.load(Ordering::Relaxed),
            })
            .collect();
        r.denied = log
            .denied
            .iter()
            .filter(|(n, _)| *n >= mark)
            .take(MAX_LISTED)
            .map(|(_, d)| d.clone())
            .collect();
        let listed = (r.connections.len() + r.denied.len()) as u64;
        r.truncated = log.next.saturating_sub(mark).saturating_sub(listed);
        r
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn reply(code: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// The headers of a hop that a proxy does not pass on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() == Method::CONNECT {
        let Some((host, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((a.host().to_string(), a.port_u16()?)))
        else {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                "nixcell proxy: CONNECT needs HOST:PORT".into(),
            ));
        };
        let mut upstream = match state.open(&host, port).await {
            Ok(s) => s,
            Err((code, why)) => return Ok(reply(code, format!("nixcell proxy: {why}"))),
        };
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(req).await {
                let mut cell = TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut cell,
                    &mut upstream,
                    COPY_BUFFER,
                    COPY_BUFFER,
                )
                .await;
            }
        });
        return Ok(Response::new(
            Empty::new().map_err(|never| match never {}).boxed(),
        ));
    }
    let uri = req.uri().clone();
    let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "nixcell proxy: expected an absolute http:// URL, or CONNECT HOST:PORT (https)".into(),
        ));
    };
    let port = uri.port_u16().unwrap_or(80);
    let upstream = match state.open(host, port).await {
        Ok(s) => s,
        Err((code, why)) => return Ok(reply(code, format!("nixcell proxy: {why}"))),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => {
                return Ok(reply(
                    StatusCode::BAD_GATEWAY,
                    format!("nixcell proxy: {e}"),
                ));
            }
        };
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let named: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        parts.headers.remove(h);
    }
    // The Host the upstream sees is the one checked: a request for an allowed name
    // with another Host would reach another site served at the same address.
    parts.headers.remove(header::HOST);
    if let Some(a) = uri.authority()
        && let Ok(v) = header::HeaderValue::from_str(&match a.port_u16() {
            Some(p) => format!("{}:{p}", a.host()),
            None => a.host().to_string(),
        })
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_default();
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(res) => Ok(res.map(|b| b.boxed())),
        Err(e) => Ok(reply(
            StatusCode::BAD_GATEWAY,
            format!("nixcell proxy: {e}"),
        )),
    }
}

impl State {
    fn deny(&self, host: &str, port: u16, reason: String) -> (StatusCode, String) {
        self.deny_at(host, port, reason, None)
    }

    fn deny_at(
        &self,
        host: &str,
        port: u16,
        reason: String,
        address: Option<IpAddr>,
    ) -> (StatusCode, String) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.deny(Denied {
            host: crate::changes::shown(&host.chars().take(253).collect::<String>()),
            port,
            reason: reason.clone(),
            address: address.map(|a| a.to_string()),
        });
        (StatusCode::FORBIDDEN, format!("{host}:{port}: {reason}"))
    }

    /// Checks `host:port` against the policy, resolves it, checks the addresses and
    /// connects to one that passed.
    async fn open(&self, host: &str, port: u16) -> Result<Counted, (StatusCode, String)> {
        let literal = literal_ip(host);
        let (name, addrs) = match literal {
            Some(ip) => (ip.to_string(), vec![ip]),
            None => {
                let Some(name) = normalize_name(host) else {
                    return Err(self.deny(host, port, "not a host name".into()));
                };
                if let Err(why) = self.policy.check_name(&name, port) {
                    return Err(self.deny(&name, port, why));
                }
                let addrs = match self.overrides.iter().find(|(n, _)| *n == name) {
                    Some((_, a)) => a.clone(),
                    None => match tokio::net::lookup_host((name.as_str(), port)).await {
                        Ok(found) => found.map(|a| a.ip()).collect(),
                        Err(e) => {
                            return Err((
                                StatusCode::BAD_GATEWAY,
                                format!("{name}: cannot resolve: {e}"),
                            ));
                        }
                    },
                };
                (name, addrs)
            }
        };
        let mut refused = None;
        let mut passed = Vec::new();
        for ip in addrs {
            match self
                .policy
                .check_addr(ip, port, literal.is_some(), &self.own)
            {
                Ok(()) => passed.push(SocketAddr::new(ip, port)),
                Err(why) => refused = Some((why, ip)),
            }
        }
        if passed.is_empty() {
            return Err(match refused {
                Some((why, ip)) => self.deny_at(&name, port, why, Some(ip)),
                None => self.deny(&name, port, "resolves to no address".into()),
            });
        }
        let mut last = String::new();
        for addr in passed {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let c = Counted {
                        inner: stream,
                        bytes_in: Arc::default(),
                        bytes_out: Arc::default(),
                    };
                    let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                    log.conn(Conn {
                        host: name.clone(),
                        port,
                        address: addr,
                        bytes_in: c.bytes_in.clone(),
                        bytes_out: c.bytes_out.clone(),
                    });
                    return Ok(c);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
            }
        }
        Err((StatusCode::BAD_GATEWAY, format!("{name}:{port}: {last}")))
    }
}

/// An upstream connection that counts the bytes each way.
struct Counted {
    inner: TcpStream,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.bytes_out.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(p: &Proxy, host: &str) {
        p.state.deny(host, 80, "not allowed".into());
    }

    #[test]
    fn a_report_since_a_mark_lists_only_what_came_after_and_counts_what_was_dropped() {
        let p = Proxy::bind(NetPolicy::default()).unwrap();
        refusal(&p, "before.test");
        let mark = p.mark();
        refusal(&p, "after.test");
        let r = p.report_since(mark);
        let hosts: Vec<&str> = r.denied.iter().map(|d| d.host.as_str()).collect();
        assert_eq!(hosts, ["after.test"]);
        assert_eq!(r.truncated, 0);
        assert_eq!(p.report().denied.len(), 2);
        // Past what the proxy keeps, the oldest go; a report asking for them counts them.
        for _ in 0..MAX_KEPT {
            refusal(&p, "many.test");
        }
        let r = p.report_since(mark);
        assert_eq!(r.denied.len(), MAX_LISTED);
        assert_eq!(r.truncated, (MAX_KEPT + 1 - MAX_LISTED) as u64);
        assert!(r.denied.iter().all(|d| d.host == "many.test"));
        let r = p.report_since(p.mark());
        assert!(r.denied.is_empty() && r.truncated == 0);
    }
}
