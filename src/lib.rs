//! nixcell: run untrusted commands inside exactly the Nix store closure of a declared
//! environment, in fresh namespaces, with every layer reported.
//!
//! The layout (docs/ARCHITECTURE.md, module map): `cli` parses and presents; `run` is
//! the pipeline from a request to a verdict; `env` finds and builds environments
//! (projects, declarations, Nix); `agent` serves agents (context, edits); `mcp` is the
//! MCP server; `sandbox` builds and confines the cell and imports nothing of the rest.

pub mod agent;
pub mod changes;
pub mod cli;
pub mod dirs;
pub mod doctor;
pub mod env;
pub mod fsat;
pub mod mcp;
pub mod net;
pub mod oci;
pub mod peer;
pub mod pool;
pub mod profile;
pub mod run;
pub mod sandbox;
pub mod session;
pub mod units;

// Short paths to the modules of the layout, e.g. `crate::plan` for `crate::run::plan`.
pub use agent::{context, edit};
pub use env::{declare, front, nix, project, seal};
pub use mcp::rundir;
pub use run::{harden, hints, plan, supervise, verdict};
/// The sandbox's input ([`sandbox::RunSpec`] and its parts).
pub use sandbox as spec;
