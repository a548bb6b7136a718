//! nixcell: run untrusted commands inside exactly the Nix store closure of a declared
//! environment, in fresh namespaces, with every layer reported.

pub mod changes;
pub mod cli;
pub mod context;
pub mod declare;
pub mod dirs;
pub mod doctor;
pub mod edit;
pub mod front;
pub mod fsat;
pub mod harden;
pub mod hints;
pub mod mcp;
pub mod nix;
pub mod plan;
pub mod profile;
pub mod project;
pub mod run;
pub mod rundir;
pub mod sandbox;
pub mod seal;
pub mod supervise;
pub mod units;
pub mod verdict;

/// The sandbox's input ([`sandbox::RunSpec`] and its parts), by its older path.
pub use sandbox as spec;
