//! Restoring a container with a user namespace of its own. CRIU makes that namespace and
//! then, as the container's root (a host id without privileges over host-owned files),
//! opens the rest of the images relative to the images directory. A directory only host
//! root may search refuses it even an image that does not exist (EACCES, not ENOENT), so
//! while CRIU restores, the container's root group is let search it: the directory's group
//! becomes that group with search permission only, and both go back afterwards. Nothing
//! else is opened up: other users gain nothing, and the images stay unlistable.

use crate::runtime::namespaces;
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Gid, fchown};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The host uid and gid the container's root maps to, when the spec makes a user
/// namespace with maps (a joined one carries its own maps, which the spec does not say).
pub fn mapped_root(spec: &Spec) -> Option<(u32, u32)> {
    if !namespaces::creates(spec, LinuxNamespaceType::User) {
        return None;
    }
    let linux = spec.linux().as_ref()?;
    let host_of_zero = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.as_ref()?
            .iter()
            .find_map(|m| (m.container_id() == 0 && m.size() > 0).then_some(m.host_id()))
    };
    Some((
        host_of_zero(linux.uid_mappings())?,
        host_of_zero(linux.gid_mappings())?,
    ))
}

/// Whether a process with fsuid `uid` and fsgid `gid`, and no capability over the inode,
/// may search a directory of this owner and mode (ACLs aside: they only ever add here).
fn may_search(owner: (u32, u32), mode: u32, uid: u32, gid: u32) -> bool {
    if owner.0 == uid {
        mode & 0o100 != 0
    } else if owner.1 == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The mode that lets the directory's group search and do nothing else, the owner's and
/// others' bits (and the special bits) kept.
fn search_only_for_group(mode: u32) -> u32 {
    (mode & !0o070) | 0o010
}

/// Search permission on the images directory for the container's root group, taken back
/// when dropped. A directory the mapped root may already search is left as it is.
#[derive(Debug)]
pub struct ImagesSearch {
    dir: PathBuf,
    file: File,
    /// The directory's group and mode before, once the group was changed.
    before: Option<(u32, u32)>,
}

impl ImagesSearch {
    pub fn grant(dir: &Path, (uid, gid): (u32, u32)) -> Result<ImagesSearch, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(|e| format!("open the images directory {}: {e}", dir.display()))?;
        let st = fstat(file.as_fd()).map_err(|e| format!("stat {}: {e}", dir.display()))?;
        let mode = st.st_mode & 0o7777;
        let mut grant = ImagesSearch {
            dir: dir.to_path_buf(),
            file,
            before: None,
        };
        if may_search((st.st_uid, st.st_gid), mode, uid, gid) {
            return Ok(grant);
        }
        let refused = |what: &str, e: nix::Error| {
            format!(
                "let the container's root (host gid {gid}) search the images directory {} \
                 ({what}): {e}; give that group search permission on it (chgrp {gid}, \
                 chmod g+x) and restore again",
                dir.display()
            )
        };
        let fd = grant.file.as_fd();
        fchown(fd, None, Some(Gid::from_raw(gid))).map_err(|e| refused("chgrp", e))?;
        // From here on the drop puts the group back, even if the mode cannot be set.
        grant.before = Some((st.st_gid, mode));
        let search = Mode::from_bits_truncate(search_only_for_group(mode));
        fchmod(grant.file.as_fd(), search).map_err(|e| refused("chmod", e))?;
        tracing::debug!(dir = %dir.display(), gid, "the container's root may search the images");
        Ok(grant)
    }
}

impl Drop for ImagesSearch {
    fn drop(&mut self) {
        let Some((gid, mode)) = self.before else {
            return;
        };
        let fd = self.file.as_fd();
        let back = fchown(fd, None, Some(Gid::from_raw(gid)))
            .and_then(|_| fchmod(fd, Mode::from_bits_truncate(mode)));
        if let Err(e) = back {
            tracing::warn!(
                dir = %self.dir.display(),
                "could not give the images directory its group {gid} and mode {mode:o} back: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn search_is_decided_by_the_owner_then_the_group_then_others() {
        assert!(!may_search((0, 0), 0o700, 300000, 300000));
        assert!(may_search((0, 0), 0o711, 300000, 300000));
        assert!(may_search((0, 300000), 0o710, 300000, 300000));
        // The owner's bits decide for the owner even when others may search.
        assert!(!may_search((300000, 0), 0o601, 300000, 300000));
        assert!(!may_search((0, 300000), 0o701, 300000, 300000));
        assert_eq!(search_only_for_group(0o2750), 0o2710);
        assert_eq!(search_only_for_group(0o700), 0o710);
    }

    #[test]
    fn the_mapped_root_comes_from_the_maps_of_a_new_user_namespace() {
        let spec = |ns: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {
                    "namespaces": ns,
                    "uidMappings": [
                        { "containerID": 1, "hostID": 500001, "size": 10 },
                        { "containerID": 0, "hostID": 300000, "size": 1 }
                    ],
                    "gidMappings": [{ "containerID": 0, "hostID": 400000, "size": 65536 }]
                }
            }))
            .unwrap()
        };
        assert_eq!(
            mapped_root(&spec(serde_json::json!([{ "type": "user" }]))),
            Some((300000, 400000))
        );
        assert_eq!(
            mapped_root(&spec(serde_json::json!([{ "type": "mount" }]))),
            None
        );
        assert_eq!(
            mapped_root(&spec(
                serde_json::json!([{ "type": "user", "path": "/proc/1/ns/user" }])
            )),
            None
        );
    }

    /// Needs root (it gives the directory a group it is not in); run as root like the
    /// integration tests.
    #[test]
    fn the_grant_is_taken_back_and_a_searchable_directory_is_left_alone() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test changes a directory's group: run it as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let before = std::fs::metadata(&dir).unwrap();
        {
            let _g = ImagesSearch::grant(&dir, (300000, 300000)).unwrap();
            let m = std::fs::metadata(&dir).unwrap();
            assert_eq!((m.gid(), m.mode() & 0o7777), (300000, 0o710));
        }
        let after = std::fs::metadata(&dir).unwrap();
        assert_eq!((after.gid(), after.mode() & 0o7777), (before.gid(), 0o750));

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let g = ImagesSearch::grant(&dir, (300000, 300000)).unwrap();
        assert!(g.before.is_none());
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (before.gid(), 0o711));
    }
}
