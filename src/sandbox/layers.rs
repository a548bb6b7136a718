//! Security layers applied by the command's process right before execve(2).
//! The init stage applies them in the order DESIGN.md gives: no_new_privs, then
//! Landlock (after all mounts), then seccomp last.

use serde::{Deserialize, Serialize};

/// Which layers the cell applies and how strictly; filled from the profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecuritySpec {}
