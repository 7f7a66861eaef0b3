//! Excerpts of CRIU's log for error messages: CRIU says why it failed only in its log, so
//! every error quotes the `Error` lines with the few lines that led to each.

use std::path::Path;

/// How many lines before each `Error` line are quoted (runc quotes five as well).
const CONTEXT_BEFORE: usize = 5;
/// When the log has no `Error` line, its tail is the best clue.
const TAIL_WITHOUT_ERRORS: usize = 10;

/// `Error` lines CRIU logs on hosts where all is well, which would hide the real cause:
/// without CAP_SYS_RESOURCE (these VMs) CRIU cannot raise its own fd limit and carries on.
const HARMLESS: &[&str] = &["Can't setup RLIMIT_NOFILE for self"];

/// Whether `line` is an `Error` CRIU logs even when nothing is wrong.
pub fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

/// CRIU errors whose log line does not say what to do, and what to do. Matched against
/// the excerpt, first match wins.
const HINTS: &[(&str, &str)] = &[
    (
        "without peer",
        "a unix socket in the container is connected to one outside it (a host daemon's, \
         such as /dev/log). On the host's network namespace --ext-unix-sk, on checkpoint \
         and restore, carries a datagram one (its peer must be at the same path on \
         restore); CRIU looks for the peer only in the container's network namespace, so \
         with one of its own the connection must be closed before the checkpoint",
    ),
    (
        "Don't have tty to inherit session from",
        "the checkpointed shell job was on a terminal, and restore --shell-job gives it \
         ferry's own: run the restore from a terminal (its stdin one)",
    ),
];

/// Advice for a failure whose log `excerpt` CRIU leaves unexplained, if ferry knows it.
pub fn hint(excerpt: &str) -> Option<&'static str> {
    HINTS
        .iter()
        .find(|(pattern, _)| excerpt.contains(pattern))
        .map(|(_, hint)| *hint)
}

/// Every line of the log at `log` that contains "Error", each with the 5 lines before it.
/// Overlapping windows are merged and gaps are marked with `...`. A log without `Error`
/// lines gives its last lines; an unreadable one says why.
pub fn excerpt(log: &Path) -> String {
    match std::fs::read(log) {
        Ok(bytes) => excerpt_of(&String::from_utf8_lossy(&bytes)),
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

/// [`excerpt`] over the log's text.
pub fn excerpt_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("Error") && !is_harmless(l))
        .map(|(i, _)| i)
        .collect();
    if errors.is_empty() {
        let start = lines.len().saturating_sub(TAIL_WITHOUT_ERRORS);
        let mut out = String::from("(no Error lines; the log ends with)\n");
        for line in &lines[start..] {
            out.push_str(line);
            out.push('\n');
        }
        return out;
    }
    let mut out = String::new();
    // `next` is the first line not yet printed, so windows never repeat a line.
    let mut next = 0;
    for &e in &errors {
        let start = e.saturating_sub(CONTEXT_BEFORE).max(next);
        if start > next && !out.is_empty() {
            out.push_str("...\n");
        }
        for line in &lines[start..=e] {
            out.push_str(line);
            out.push('\n');
        }
        next = e + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_come_with_five_lines_before_them() {
        let log: String = (1..=20)
            .map(|i| {
                if i == 10 {
                    "(00.1) Error (criu/cr-dump.c:1): boom\n".to_string()
                } else {
                    format!("line {i}\n")
                }
            })
            .collect();
        let ex = excerpt_of(&log);
        assert_eq!(
            ex,
            "line 5\nline 6\nline 7\nline 8\nline 9\n(00.1) Error (criu/cr-dump.c:1): boom\n"
        );
    }

    #[test]
    fn close_errors_share_their_context_and_far_ones_are_separated() {
        let mut lines: Vec<String> = (0..30).map(|i| format!("l{i}")).collect();
        lines[6] = "Error a".into();
        lines[8] = "Error b".into();
        lines[25] = "Error c".into();
        let ex = excerpt_of(&lines.join("\n"));
        assert_eq!(
            ex,
            "l1\nl2\nl3\nl4\nl5\nError a\nl7\nError b\n...\nl20\nl21\nl22\nl23\nl24\nError c\n"
        );
    }

    #[test]
    fn harmless_errors_are_context_not_causes() {
        let log = "a\nError (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: \
                   Operation not permitted\nb\nError (criu/cr-dump.c:2111): Dumping FAILED.\n";
        let ex = excerpt_of(log);
        assert!(ex.starts_with("a\nError (criu/util.c:1533)"), "{ex}");
        assert!(ex.ends_with("Dumping FAILED.\n"), "{ex}");
        let only_harmless =
            "x\nError (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self\n";
        assert!(excerpt_of(only_harmless).starts_with("(no Error lines"));
    }

    #[test]
    fn a_unix_socket_without_peer_is_explained() {
        let ex = "Error (criu/sk-unix.c:418): unix: Unix socket 9358612 without peer 9358577\n";
        assert!(hint(ex).is_some_and(|h| h.contains("--ext-unix-sk")));
        assert_eq!(hint("Error (criu/cr-dump.c:2111): Dumping FAILED.\n"), None);
        let tty = "Error (criu/tty.c:1010): tty: Don't have tty to inherit session from\n";
        assert!(hint(tty).is_some_and(|h| h.contains("from a terminal")));
    }

    #[test]
    fn a_log_without_errors_gives_its_tail() {
        let log: String = (0..15).map(|i| format!("x{i}\n")).collect();
        let ex = excerpt_of(&log);
        assert!(ex.starts_with("(no Error lines"));
        assert!(ex.contains("x5\n") && ex.contains("x14\n") && !ex.contains("x4\n"));
    }

    #[test]
    fn a_missing_log_says_so() {
        let ex = excerpt(Path::new("/nonexistent/ferry/dump.log"));
        assert!(
            ex.contains("cannot read /nonexistent/ferry/dump.log"),
            "{ex}"
        );
    }
}
