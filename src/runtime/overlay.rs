//! Overlay root filesystems: image layers (read-only lower dirs) under a per-container upper
//! dir. The upper dir is the container's own changes, which is what a checkpoint carries.

use crate::runtime::error::{Context, Error, Result};
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// Lower dirs, top first (overlayfs order).
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Overlay {
    pub fn mount(&self, target: &Path) -> Result<()> {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| escape_option(&p.to_string_lossy()))
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            escape_option(&self.upper.to_string_lossy()),
            escape_option(&self.work.to_string_lossy())
        );
        if data.len() >= 4096 {
            return Err(Error::Other(format!(
                "overlay options for {} are {} bytes, over the kernel's one-page limit: \
                 the image has too many layers ({}) for one overlay mount",
                target.display(),
                data.len(),
                self.lowers.len()
            )));
        }
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .ctx(|| format!("mount overlay on {} ({data})", target.display()))
    }

    /// The overlay mounted at `target`, read from /proc/self/mountinfo: how ferry finds the
    /// upper dir of a rootfs someone else (podman) mounted.
    pub fn find(target: &Path) -> Result<Option<Overlay>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo")?;
        let target = target
            .canonicalize()
            .unwrap_or_else(|_| target.to_path_buf());
        // The last mount on a path is the one visible there.
        Ok(text
            .lines()
            .filter_map(crate::sys::mountinfo::parse_line)
            .rfind(|m| m.fstype == "overlay" && Path::new(&m.point) == target)
            .and_then(|m| from_options(&m.super_opts)))
    }
}

pub fn unmount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("unmount {}", target.display())),
    }
}

/// Commas and colons are separators in overlay options; the kernel takes `\` escapes.
fn escape_option(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Splits overlay super options on unescaped commas, then lowerdir on unescaped colons.
fn from_options(opts: &str) -> Option<Overlay> {
    let fields = split_unescaped(opts, ',');
    let get = |key: &str| {
        fields
            .iter()
            .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let lowers = split_unescaped(get("lowerdir")?, ':')
        .into_iter()
        .map(|s| PathBuf::from(s.replace("\\:", ":").replace("\\,", ",")))
        .collect();
    Some(Overlay {
        lowers,
        upper: PathBuf::from(get("upperdir")?),
        work: PathBuf::from(get("workdir").unwrap_or("")),
    })
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = vec![];
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_mountinfo_line() {
        let line = "812 640 0:120 / /var/lib/containers/storage/overlay/abc/merged rw,nodev,relatime - overlay overlay rw,context=\"x\",lowerdir=/var/lib/containers/storage/overlay/l/AAA:/var/lib/containers/storage/overlay/l/BBB,upperdir=/var/lib/containers/storage/overlay/abc/diff,workdir=/var/lib/containers/storage/overlay/abc/work,nouserxattr";
        let m = crate::sys::mountinfo::parse_line(line).unwrap();
        assert_eq!(m.point, "/var/lib/containers/storage/overlay/abc/merged");
        assert_eq!(m.fstype, "overlay");
        let o = from_options(&m.super_opts).unwrap();
        assert_eq!(o.lowers.len(), 2);
        assert_eq!(
            o.upper,
            Path::new("/var/lib/containers/storage/overlay/abc/diff")
        );
    }

    #[test]
    fn escapes_round_trip() {
        let o = from_options("lowerdir=/a\\:b:/c,upperdir=/u,workdir=/w").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), PathBuf::from("/c")]);
        assert_eq!(escape_option("/a:b,c"), "/a\\:b\\,c");
    }
}
