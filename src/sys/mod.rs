//! Small wrappers over kernel interfaces shared by the runtime: signals, /proc, fds.

pub mod interrupt;
pub mod mountinfo;
pub mod proc;
pub mod signal;
