//! Calls to the Nix CLI and what we learn from the store.

pub mod closure;
