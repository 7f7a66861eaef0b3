//! `/proc/<pid>/mountinfo`, one line at a time (proc(5)).

/// The fields of one mount ferry looks at, octal escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mounted directory of the filesystem (`/` unless a bind of a subdirectory).
    pub root: String,
    /// Where it is mounted, relative to the reading process's root.
    pub point: String,
    /// The mount's own options (`ro,nosuid,relatime`).
    pub mount_opts: String,
    pub fstype: String,
    /// The superblock's options (`ro`, `rw,size=65536k`).
    pub super_opts: String,
    /// Whether the mount propagates to or from others (`shared:N`, `master:N` fields).
    pub propagates: bool,
}

impl Mount {
    /// True when the filesystem itself (not only this mount of it) is read-only.
    pub fn super_read_only(&self) -> bool {
        self.super_opts.split(',').any(|o| o == "ro")
    }
}

/// One line of mountinfo; None for a line that does not parse.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let root = unescape_octal(l.nth(3)?);
    let point = unescape_octal(l.next()?);
    let mount_opts = l.next()?.to_string();
    let propagates = l.any(|f| f.starts_with("shared:") || f.starts_with("master:"));
    let mut r = right.split(' ');
    let fstype = r.next()?.to_string();
    let _source = r.next()?;
    let super_opts = unescape_octal(r.next().unwrap_or(""));
    Some(Mount {
        root,
        point,
        mount_opts,
        fstype,
        super_opts,
        propagates,
    })
}

/// Every mount of `text`, in the kernel's order (a later mount on a path covers an earlier).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// Detaches every mount at or below `dir` (the last mounted first), errors ignored: for
/// leftovers, such as the cgroup yard a killed CRIU mounted in its work directory, which
/// would make removing that directory fail with EBUSY. Returns how many there were.
pub fn unmount_under(dir: &std::path::Path) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let dir = dir.to_string_lossy();
    let below = format!("{}/", dir.trim_end_matches('/'));
    let mut found = 0;
    for m in parse(&text).iter().rev() {
        if m.point == dir || m.point.starts_with(&below) {
            let _ = nix::mount::umount2(m.point.as_str(), nix::mount::MntFlags::MNT_DETACH);
            found += 1;
        }
    }
    found
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_tmpfs_and_an_escaped_bind() {
        let m = parse_line("116 106 0:49 / /proc/acpi ro,relatime - tmpfs tmpfs ro").unwrap();
        assert_eq!(m.root, "/");
        assert_eq!(m.point, "/proc/acpi");
        assert_eq!(m.mount_opts, "ro,relatime");
        assert_eq!(m.fstype, "tmpfs");
        assert!(m.super_read_only());
        assert!(!m.propagates);
        let m = parse_line(
            "118 106 0:6 /null /proc/my\\040keys rw,nosuid shared:1 - devtmpfs devtmpfs \
             rw,size=12334460k,mode=755",
        )
        .unwrap();
        assert_eq!(m.root, "/null");
        assert_eq!(m.point, "/proc/my keys");
        assert_eq!(m.fstype, "devtmpfs");
        assert!(!m.super_read_only());
        assert!(m.propagates);
        assert!(parse_line("garbage").is_none());
    }
}
