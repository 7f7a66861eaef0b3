//! The OCI seccomp profile (`linux.seccomp`) compiled to BPF with `seccompiler`.

use crate::runtime::error::Result;
use oci_spec::runtime::LinuxSeccomp;

/// Compiled filters, installed in order by [`install`]. Compiling happens before the
/// container's process drops privileges, installing as the very last step before exec.
pub struct SeccompProgram {
    pub filters: Vec<seccompiler::BpfProgram>,
}

pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram> {
    let _ = profile;
    todo!("seccomp helper")
}

pub fn install(program: &SeccompProgram) -> Result<()> {
    let _ = program;
    todo!("seccomp helper")
}
