//! Signal names and numbers as `kill` accepts them: `TERM`, `SIGTERM`, `term`, `15`.
//!
//! Real-time signals (`RTMIN+3`, 34–64) are recognised but refused: `Container::kill` takes a
//! nix `Signal`, which cannot hold them, so a clear error beats a silent substitution.

use crate::runtime::{Error, Result};
use nix::sys::signal::Signal;
use std::str::FromStr;

/// Parses a signal as runc's `kill` does: a name with or without `SIG` in any case, or a number.
pub fn parse(s: &str) -> Result<Signal> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(Error::InvalidSignal(s.to_string()));
    }
    if let Ok(n) = trimmed.parse::<i32>() {
        return from_number(s, n);
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        return Err(realtime_unsupported(s));
    }
    // Old aliases that procps `kill -l` still prints but nix does not name.
    let name = match name {
        "IOT" => "ABRT",
        "CLD" => "CHLD",
        "POLL" => "IO",
        other => other,
    };
    Signal::from_str(&format!("SIG{name}")).map_err(|_| Error::InvalidSignal(s.to_string()))
}

fn from_number(input: &str, n: i32) -> Result<Signal> {
    if (32..=64).contains(&n) {
        return Err(realtime_unsupported(input));
    }
    Signal::try_from(n).map_err(|_| Error::InvalidSignal(input.to_string()))
}

fn realtime_unsupported(input: &str) -> Error {
    Error::Other(format!(
        "signal {input:?} is a real-time signal, which ferry kill does not support yet; \
         use a standard signal such as TERM, KILL or a number from 1 to 31"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_spelling() {
        for s in ["KILL", "SIGKILL", "kill", "sigkill", "Kill", "9", " 9 "] {
            assert_eq!(parse(s).unwrap(), Signal::SIGKILL, "{s}");
        }
        assert_eq!(parse("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("15").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("hup").unwrap(), Signal::SIGHUP);
        assert_eq!(parse("SIGWINCH").unwrap(), Signal::SIGWINCH);
        assert_eq!(parse("IOT").unwrap(), Signal::SIGABRT);
        assert_eq!(parse("CLD").unwrap(), Signal::SIGCHLD);
    }

    #[test]
    fn every_standard_number() {
        for n in 1..=31 {
            assert_eq!(parse(&n.to_string()).unwrap() as i32, n);
        }
    }

    #[test]
    fn invalid_signals_are_rejected() {
        for s in ["", "0", "-1", "65", "100", "FOO", "SIG", "SIGFOO", "9x"] {
            assert!(
                matches!(parse(s), Err(Error::InvalidSignal(_))),
                "{s:?} should be invalid"
            );
        }
    }

    #[test]
    fn realtime_signals_get_a_clear_error() {
        for s in ["RTMIN", "RTMIN+3", "SIGRTMAX-1", "34", "64"] {
            let err = parse(s).unwrap_err().to_string();
            assert!(err.contains("real-time"), "{s}: {err}");
        }
    }
}
