//! Where a cell's software comes from: projects (`devenv.nix` + `nixcell.toml`), their
//! declarations, the calls to Nix that evaluate and build them, and the sealed caches
//! of what was built.

pub mod declare;
pub mod front;
pub mod nix;
pub mod project;
pub mod seal;
