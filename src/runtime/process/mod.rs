//! The processes ferry forks to build a container: the parent (the `ferry` invocation), the
//! stage-1 child that enters or creates namespaces, and the container's init (or an exec'd
//! process) that prepares the root filesystem and finally execs the user's program.

pub mod channel;
pub mod init;
pub mod wait;
