//! What a `create`, `run` or `restore` leaves when it is killed (SIGKILL, the OOM killer)
//! while it makes a container, and how `ferry delete` clears it.
//!
//! The maker takes the id first ([`Runtime::take_id`]: the state directory) and only writes
//! the container's record once the container is made. Killed in between, it can leave a
//! half-restored task in the container's cgroup (seen spinning at 100% CPU after a `restore
//! -i` was killed while CRIU worked), CRIU's mounts in the state directory, the image
//! rootfs's overlay and the cgroup itself: no container to `delete`, yet the id is taken.
//! So the maker notes, beside the id, who it is (pid and start time: a dead maker is told
//! from a live one) and where the bundle is (its config.json names the cgroup).

use crate::runtime::container::cgroup_of;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{Runtime, bundle::Bundle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const MAKER_FILE: &str = "maker.json";

/// Who is making the container of a taken id, and from which bundle.
#[derive(Debug, Serialize, Deserialize)]
struct Maker {
    pid: i32,
    start: u64,
    bundle: PathBuf,
}

/// What a taken id without a container is.
pub enum Unmade {
    /// Its maker still runs (or has only just taken it): not to be touched.
    Making { by: String },
    /// Its maker is gone: what it left can go. The bundle, when noted.
    Remains {
        bundle: Option<PathBuf>,
        pid: Option<i32>,
    },
}

impl Runtime {
    /// Notes the maker of a just-taken id (see the module doc).
    pub(crate) fn note_maker(&self, dir: &Path, bundle: &Path) {
        let pid = std::process::id() as i32;
        let maker = Maker {
            pid,
            start: crate::sys::proc::start_time(pid).unwrap_or_default(),
            bundle: std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_path_buf()),
        };
        // Whole or not at all: a command wanting the id may read it at any moment.
        let tmp = dir.join(".maker.json.tmp");
        if let Ok(text) = serde_json::to_vec(&maker)
            && std::fs::write(&tmp, text).is_ok()
        {
            let _ = std::fs::rename(&tmp, dir.join(MAKER_FILE));
        }
    }

    /// For an id whose state directory exists but holds no container: whether its maker
    /// still runs. None when the directory is gone or holds a container.
    pub fn unmade_id(&self, id: &str) -> Option<Unmade> {
        let dir = self.container_dir(id);
        if !dir.is_dir() || dir.join(crate::runtime::container::STATE_FILE).exists() {
            return None;
        }
        let maker: Option<Maker> = std::fs::read(dir.join(MAKER_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Some(match maker {
            Some(m) if crate::sys::proc::is_alive(m.pid, m.start) => Unmade::Making {
                by: format!(
                    "ferry (pid {}: {})",
                    m.pid,
                    crate::sys::proc::cmdline(&m.pid.to_string())
                ),
            },
            // Taken a moment ago, the note not yet (or not wholly) written.
            None if just_made(&dir) => Unmade::Making {
                by: "another ferry".into(),
            },
            m => Unmade::Remains {
                pid: m.as_ref().map(|m| m.pid),
                bundle: m.map(|m| m.bundle),
            },
        })
    }

    /// The ids that hold what a killed maker left (for `list` to mention).
    pub fn remains(&self) -> Vec<(String, Option<i32>)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut out: Vec<_> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                match self.unmade_id(&id) {
                    Some(Unmade::Remains { pid, .. }) => Some((id, pid)),
                    _ => None,
                }
            })
            .collect();
        out.sort();
        out
    }

    /// Why `id` cannot be taken: it exists, is being made, or holds what a killed maker left.
    pub(crate) fn taken_error(&self, id: &str) -> Error {
        match self.unmade_id(id) {
            Some(Unmade::Remains { pid, .. }) => Error::Other(remains_note(id, pid)),
            // Being made: to whoever wants the id, it exists.
            Some(Unmade::Making { .. }) | None => Error::Exists { id: id.to_string() },
        }
    }

    /// Removes what a killed maker of `id` left: the processes in the container's cgroup
    /// and the cgroup, the mounts below the state directory and the directory, and a
    /// rootfs made from an image. Returns what it removed, for the message.
    pub fn clear_remains(&self, id: &str, bundle: Option<&Path>) -> Result<String> {
        let mut removed = vec![];
        let image_bundle = crate::runtime::from_image::bundle_of(&self.storage, id);
        let bundle = bundle.map(Path::to_path_buf).or_else(|| {
            // Noted by no maker (an older ferry): only an image container's bundle is known.
            image_bundle
                .join("config.json")
                .exists()
                .then(|| image_bundle.clone())
        });
        let spec = bundle
            .as_ref()
            .and_then(|b| Bundle::load(b).ok())
            .map(|b| b.spec);
        if let Some(spec) = &spec {
            let cgroup = cgroup_of(spec, id)?;
            if cgroup.is_frozen().unwrap_or(false) {
                cgroup.thaw()?;
            }
            let killed = crate::runtime::delete::kill_until_gone(cgroup.as_ref(), id, || true)?;
            if killed > 0 {
                removed.push(format!("{killed} process(es)"));
            }
            cgroup.destroy()?;
            removed.push("its cgroup".into());
        }
        let dir = self.container_dir(id);
        let mounts = crate::sys::mountinfo::unmount_under(&dir);
        if mounts > 0 {
            removed.push(format!("{mounts} mount(s)"));
        }
        if bundle.as_deref() == Some(image_bundle.as_path()) {
            crate::runtime::from_image::release_bundle(&self.storage, &image_bundle, id)?;
            removed.push(format!("its rootfs {}", image_bundle.display()));
        }
        std::fs::remove_dir_all(&dir).ctx(|| format!("remove {}", dir.display()))?;
        // CRIU's work files of a killed restore, with the cgroup yard it mounted there.
        crate::archive::stage::sweep_stale(&self.storage.join("work"));
        removed.push("its state directory".into());
        Ok(removed.join(", "))
    }
}

/// What holds an id a killed maker left, and what to do: for a command that wants the id,
/// and for `list`.
pub fn remains_note(id: &str, pid: Option<i32>) -> String {
    format!(
        "the id {id:?} is taken by what was left when the ferry making that container{} was \
         killed; `ferry delete {id}` removes it",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )
}

/// Made in the last few seconds (a maker writes its note right after taking the id).
fn just_made(dir: &Path) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> Runtime {
        Runtime {
            storage: dir.join("storage"),
            ..Runtime::new(dir.join("root"))
        }
    }

    fn make(rt: &Runtime, id: &str) -> PathBuf {
        rt.take_id(id, &crate::runtime::from_image::bundle_of(&rt.storage, id))
            .unwrap()
    }

    fn aged(dir: &Path) {
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::open(dir).unwrap().set_modified(old).unwrap();
    }

    #[test]
    fn a_live_maker_is_making_and_a_dead_one_left_remains() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime(tmp.path());
        // Noted by this test process: alive.
        let dir = make(&rt, "live");
        aged(&dir);
        assert!(
            matches!(rt.unmade_id("live"), Some(Unmade::Making { by }) if by.contains(&std::process::id().to_string()))
        );
        assert!(matches!(rt.taken_error("live"), Error::Exists { .. }));
        assert!(rt.remains().is_empty());

        // The same note with a start time that is not this process's: a pid reused.
        let note = dir.join(MAKER_FILE);
        let text = std::fs::read_to_string(&note).unwrap();
        let mut m: Maker = serde_json::from_str(&text).unwrap();
        m.start += 1;
        std::fs::write(&note, serde_json::to_vec(&m).unwrap()).unwrap();
        aged(&dir);
        match rt.unmade_id("live") {
            Some(Unmade::Remains { pid, bundle }) => {
                assert_eq!(pid, Some(std::process::id() as i32));
                assert_eq!(
                    bundle,
                    Some(std::path::absolute(rt.storage.join("containers/live")).unwrap())
                );
            }
            _ => panic!("a maker whose start time differs is not alive"),
        }
        let e = rt.taken_error("live").to_string();
        assert!(
            e.contains("was killed") && e.contains("ferry delete live"),
            "{e}"
        );
        assert_eq!(
            rt.remains(),
            [("live".to_string(), Some(std::process::id() as i32))]
        );
    }

    #[test]
    fn an_id_without_a_note_is_being_made_only_for_a_moment() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime(tmp.path());
        let dir = rt.container_dir("bare");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(rt.unmade_id("bare"), Some(Unmade::Making { .. })));
        aged(&dir);
        assert!(matches!(
            rt.unmade_id("bare"),
            Some(Unmade::Remains {
                pid: None,
                bundle: None
            })
        ));
        // A container that was made is none of this.
        std::fs::write(dir.join(crate::runtime::container::STATE_FILE), "{}").unwrap();
        assert!(rt.unmade_id("bare").is_none());
        // And what gives an id back leaves no note behind.
        let dir = make(&rt, "given");
        assert!(rt.give_back_id("given"));
        assert!(!dir.exists());
    }
}
