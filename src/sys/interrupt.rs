//! SIGINT, SIGTERM and SIGHUP during `checkpoint -e` or `restore` become an orderly abort
//! instead of a death half-way. A dying checkpoint would leave the container frozen (after
//! CRIU is done) or, with CRIU killed through its parent-death signal, with CRIU's parasite
//! code still inside its tasks; a dying restore leaves a half-restored task spinning in its
//! cgroup, its mounts and its taken id (seen: a `restore -i` stopped with SIGTERM).
//!
//! [`guard`] blocks the three signals; a signal sent meanwhile stays pending, and the work
//! asks [`check`] at safe points: the archive's writers and the restore's feed fail with it,
//! so CRIU fails the ordinary way (a dump cures its parasite and thaws; a restore kills what
//! it made) and ferry cleans up. Pending rather than taken by a waiting thread: a
//! foreground restore goes on to supervise its container, and a signal that comes once the
//! restore is done must reach the container as with `run`, not be swallowed.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static GUARDED: AtomicBool = AtomicBool::new(false);
static CAUGHT: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Call before any thread is started: threads inherit the blocked set. Children get an
/// empty mask back before they exec (std's Command does that; criu::swrk too).
pub fn guard() {
    let mut set = SigSet::empty();
    for sig in SIGNALS {
        set.add(sig);
    }
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_ok() {
        GUARDED.store(true, Ordering::SeqCst);
    }
}

/// The signal that interrupted us, if one did (only under [`guard`]).
pub fn caught() -> Option<Signal> {
    if !GUARDED.load(Ordering::Relaxed) {
        return None;
    }
    if let Ok(sig) = Signal::try_from(CAUGHT.load(Ordering::Relaxed)) {
        return Some(sig);
    }
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful sigpending.
    let pending = unsafe { pending.assume_init() };
    let sig = SIGNALS
        .into_iter()
        // SAFETY: a valid set and signal number.
        .find(|s| unsafe { libc::sigismember(&pending, *s as i32) } == 1)?;
    if CAUGHT
        .compare_exchange(0, sig as i32, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        tracing::warn!(signal = %sig, "interrupted: stopping at the next safe point");
    }
    Some(sig)
}

/// An error once a signal has been caught: what the writers and the safe points return.
pub fn check() -> std::io::Result<()> {
    match caught() {
        None => Ok(()),
        // Not ErrorKind::Interrupted: write_all and friends retry that one forever.
        Some(sig) => Err(std::io::Error::other(format!("interrupted by {sig}"))),
    }
}
