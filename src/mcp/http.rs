//! `nixcell mcp --listen`: the same server over Streamable HTTP (rmcp's transport), for
//! agents not started by the same process. It listens on a loopback address or a unix
//! socket only, and every request must carry the bearer token of `--token-file`: whoever
//! holds it can run commands in cells as the server's user.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

/// Where the HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback address and port (port 0: any free one, printed at start).
    Tcp(std::net::SocketAddr),
    /// A unix socket, created with mode 0600 (it must not exist yet).
    Unix(PathBuf),
}

/// The path of the MCP endpoint.
pub const ENDPOINT: &str = "/mcp";

/// Shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 32;

/// `127.0.0.1:PORT`, `[::1]:PORT` or `unix:PATH`; any other address is refused.
pub fn parse_listen(s: &str) -> Result<Listen, McpError> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(McpError::Request("--listen unix: names no socket".into()));
        }
        return Ok(Listen::Unix(PathBuf::from(p)));
    }
    let addr: std::net::SocketAddr = s.parse().map_err(|_| {
        McpError::Request(format!(
            "--listen {s}: not an address (examples: 127.0.0.1:8808, [::1]:8808, unix:/run/user/1000/nixcell.sock)"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(McpError::Request(format!(
            "--listen {s}: only loopback addresses or a unix socket are served (whoever reaches the server with its token runs commands as you); reach it from elsewhere through an SSH tunnel"
        )));
    }
    Ok(Listen::Tcp(addr))
}

/// Reads the bearer token: a regular file of the caller's, readable by nobody else,
/// holding one token of at least [`MIN_TOKEN_LEN`] visible ASCII characters.
pub fn read_token(path: &Path) -> Result<String, McpError> {
    let bad = |why: String| McpError::Request(format!("--token-file {}: {why}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let m = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !m.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if m.uid() != nix::unistd::geteuid().as_raw() || m.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            "must be yours and readable by you only (chmod 600)".into()
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut text)
        .map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!(
            "the token must be one word of at least {MIN_TOKEN_LEN} visible ASCII characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(token.to_string())
}

/// Whether `req` carries `Authorization: Bearer TOKEN`, compared in constant time.
fn authorized<B>(req: &::http::Request<B>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn unauthorized() -> ::http::Response<Body> {
    let mut r = ::http::Response::new(
        Full::new(Bytes::from_static(
            b"nixcell mcp: missing or wrong bearer token (Authorization: Bearer TOKEN)\n",
        ))
        .boxed(),
    );
    *r.status_mut() = ::http::StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        ::http::header::WWW_AUTHENTICATE,
        ::http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Serves MCP over Streamable HTTP at [`ENDPOINT`] until the process is stopped.
pub async fn serve_http(
    target: Target,
    profile: Option<String>,
    listen: Listen,
    token: String,
    concurrency: Concurrency,
) -> Result<(), McpError> {
    let server = Server::start(target, profile, concurrency)?;
    // Host validation against DNS rebinding stays at rmcp's loopback default.
    let config =
        StreamableHttpServerConfig::default().with_max_request_body_bytes(MAX_REQUEST_BYTES);
    let mcp = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let token = Arc::new(token);
    let service = hyper::service::service_fn(move |req: ::http::Request<hyper::body::Incoming>| {
        let mut mcp = mcp.clone();
        let token = token.clone();
        async move {
            if !authorized(&req, &token) {
                return Ok::<_, Infallible>(unauthorized());
            }
            if req.uri().path() != ENDPOINT {
                let mut r = ::http::Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() = ::http::StatusCode::NOT_FOUND;
                return Ok(r);
            }
            tower_service::Service::call(&mut mcp, req).await
        }
    });
    let io = McpError::Workdir;
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
            eprintln!(
                "nixcell: serving MCP on http://{}{ENDPOINT}",
                l.local_addr().map_err(io)?
            );
            loop {
                let (s, _) = l.accept().await.map_err(io)?;
                spawn_connection(s, service.clone());
            }
        }
        Listen::Unix(path) => {
            // Created private: nobody else may even connect.
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let bound = tokio::net::UnixListener::bind(&path);
            nix::sys::stat::umask(old);
            let l = bound
                .map_err(|e| McpError::Request(format!("--listen unix:{}: {e}", path.display())))?;
            eprintln!(
                "nixcell: serving MCP on unix:{} (endpoint {ENDPOINT})",
                path.display()
            );
            loop {
                let (s, _) = l.accept().await.map_err(io)?;
                spawn_connection(s, service.clone());
            }
        }
    }
}

fn spawn_connection<S, F>(stream: S, service: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<
            ::http::Request<hyper::body::Incoming>,
            Response = ::http::Response<Body>,
            Error = Infallible,
        > + Send
        + 'static,
    F::Future: Send + 'static,
{
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_unix_sockets_are_served() {
        assert!(matches!(parse_listen("127.0.0.1:0"), Ok(Listen::Tcp(_))));
        assert!(matches!(parse_listen("[::1]:8808"), Ok(Listen::Tcp(_))));
        assert_eq!(
            parse_listen("unix:/tmp/s").unwrap(),
            Listen::Unix("/tmp/s".into())
        );
        for bad in [
            "0.0.0.0:8808",
            "192.168.1.2:80",
            "localhost:80",
            "unix:",
            "8808",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_must_be_private_long_and_sent_exactly() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        let good = "a".repeat(MIN_TOKEN_LEN);
        std::fs::write(&f, format!("{good}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_token(&f)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&f).unwrap(), good);
        std::fs::write(&f, "short").unwrap();
        assert!(read_token(&f).is_err());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_token(&link).is_err());
        let req = |h: Option<&str>| {
            let mut b = ::http::Request::builder();
            if let Some(h) = h {
                b = b.header("authorization", h);
            }
            b.body(()).unwrap()
        };
        assert!(authorized(&req(Some(&format!("Bearer {good}"))), &good));
        assert!(!authorized(&req(Some(&format!("Bearer {good}x"))), &good));
        assert!(!authorized(&req(Some(&good)), &good));
        assert!(!authorized(&req(None), &good));
    }
}
