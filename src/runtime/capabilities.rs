//! Capabilities, rlimits and no_new_privs for the container process.

use crate::runtime::error::Result;
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit};

/// Sets the bounding, effective, permitted, inheritable and ambient sets, in the order the
/// kernel requires (bounding first while CAP_SETPCAP is still held; ambient last).
/// Must be called after setuid (with PR_SET_KEEPCAPS) so the sets survive the uid change.
pub fn apply(caps: &LinuxCapabilities) -> Result<()> {
    let _ = caps;
    todo!("caps helper")
}

pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    let _ = rlimits;
    todo!("caps helper")
}
