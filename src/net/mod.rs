//! The cell's network beyond loopback: the policy (`policy`: which names and addresses,
//! from the profile, narrowed by a project's `nixcell.toml`) and the filtering proxy
//! the supervisor runs for it on the host (`proxy`). Inside the cell, a forwarder
//! (`sandbox::forward`) serves the proxy on loopback; the command finds it through
//! the proxy variables [`proxy_env`] names.

pub mod policy;
pub mod proxy;

pub use crate::sandbox::forward::{PORT_IN_CELL, SOCKET_IN_CELL};
pub use policy::{Entry, NetPolicy};
pub use proxy::{NetworkReport, Proxy};

/// The variables that point the command's tools at the proxy: loopback itself (the
/// cell's own services) goes direct.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{PORT_IN_CELL}");
    let mut v = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        v.push((name.to_string(), url.clone()));
        v.push((name.to_ascii_lowercase(), url.clone()));
    }
    let direct = "localhost,127.0.0.1,::1".to_string();
    v.push(("NO_PROXY".into(), direct.clone()));
    v.push(("no_proxy".into(), direct));
    v
}
