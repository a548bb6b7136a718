//! Calls to the Nix CLI and what we learn from the store.

pub mod build;
pub mod closure;
pub mod eval;
pub mod store;
