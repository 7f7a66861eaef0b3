//! SIGINT, SIGTERM and SIGHUP during `checkpoint -e` become an orderly abort instead of a
//! death half-way: a dying ferry would leave the container frozen (after CRIU is done) or,
//! with CRIU killed through its parent-death signal, with CRIU's parasite code still inside
//! its tasks. [`guard`] blocks the three signals and has a thread wait for them; the work
//! then asks [`check`] at safe points, and the archive's writers fail with it, so CRIU's
//! dump fails the ordinary way (it cures its parasite and thaws) and ferry cleans up.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use std::sync::atomic::{AtomicI32, Ordering};

static CAUGHT: AtomicI32 = AtomicI32::new(0);

fn signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        s.add(sig);
    }
    s
}

/// Call before any thread is started: threads inherit the blocked set. Children (criu) get
/// an empty mask back before they exec (see criu::swrk).
pub fn guard() {
    let set = signals();
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::warn!(signal = %sig, "interrupted: stopping at the next safe point");
            CAUGHT.store(sig as i32, Ordering::SeqCst);
        }
    });
}

/// The signal that interrupted us, if one did.
pub fn caught() -> Option<Signal> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// An error once a signal has been caught: what the writers and the safe points return.
pub fn check() -> std::io::Result<()> {
    match caught() {
        None => Ok(()),
        // Not ErrorKind::Interrupted: write_all and friends retry that one forever.
        Some(sig) => Err(std::io::Error::other(format!("interrupted by {sig}"))),
    }
}
