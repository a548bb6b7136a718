//! What nixcell offers an agent besides runs: the context of its environment, and
//! whitelisted edits of the declaration (each proven by a build and committed), or
//! proposals a human approves.

pub mod context;
pub mod edit;
