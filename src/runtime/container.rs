//! One container: its persisted record under `<root>/<id>/` and how its status is derived.
//! The verbs live in their own files (`start.rs`, `kill.rs`, …) as methods on `Container`.

use crate::runtime::cgroups::{self, Cgroup};
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{OciState, Runtime, Status};
use crate::sys::proc;
use chrono::{DateTime, Utc};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
/// Exists from create until start: the init waits on it before it execs the process.
pub const EXEC_FIFO: &str = "exec.fifo";
/// The exit status, written by the ferry process that supervised the container, if any.
pub const EXIT_FILE: &str = "exit";

/// What ferry remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Its start time, so a reused pid is not mistaken for the init.
    pub pid_start: u64,
    pub created: DateTime<Utc>,
    pub owner: String,
    /// The spec the container was created with (the bundle may change afterwards).
    pub spec: Spec,
    /// The overlay rootfs ferry made from an image, if it did.
    #[serde(default)]
    pub image: Option<crate::runtime::from_image::ImageRootfs>,
}

pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    pub dir: PathBuf,
    pub record: Record,
}

/// Ids become directory names and appear in cgroup paths: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let why = if id.is_empty() {
        Some("it is empty")
    } else if id == "." || id == ".." {
        Some("it is a path component")
    } else if id.len() > 1024 {
        Some("it is longer than 1024 bytes")
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
    {
        Some("use only letters, digits and _ + - .")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidId {
            id: id.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// A container held by [`Runtime::hold`]; dropping it lets go.
#[derive(Debug)]
pub struct Hold {
    _dir: std::fs::File,
    /// [`HOLDER_FILE`], removed when the hold ends (before the lock goes).
    note: Option<PathBuf>,
}

/// In a held container's state directory: the holder's pid and command line.
const HOLDER_FILE: &str = "held-by";

/// Who holds the container in `dir`, as its [`HOLDER_FILE`] says. A holder writes it
/// just after it takes the lock, so a moment is allowed for that.
fn holder(dir: &Path) -> Option<String> {
    for _ in 0..20 {
        if let Ok(s) = std::fs::read_to_string(dir.join(HOLDER_FILE))
            && !s.trim().is_empty()
        {
            return Some(format!("ferry (pid {})", s.trim()));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

impl Container {
    /// The pid of a `ferry checkpoint` that held this container and was killed before it
    /// let go (its note outlived it): a container it froze may still be frozen, if its thaw
    /// guard died with it (checkpoint::guard), as a kill of a whole cgroup does.
    pub fn held_by_a_killed_checkpoint(&self) -> Option<i32> {
        let note = std::fs::read_to_string(self.dir.join(HOLDER_FILE)).ok()?;
        let (pid, cmd) = note.split_once(": ")?;
        let pid: i32 = pid.trim().parse().ok()?;
        let checkpoint = cmd.split_whitespace().any(|w| w == "checkpoint");
        (checkpoint && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(note) = self.note.take() {
            let _ = std::fs::remove_file(note);
        }
    }
}

impl Runtime {
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Takes `id` for a new container: makes its state directory, atomically, so that of
    /// two commands making the same id at once exactly one gets it and the other is told
    /// the id exists. `create` and `restore` take it themselves; a command that makes the
    /// bundle from an image first (`run --image`, `restore -i`) takes it before that, and
    /// passes `id_taken`.
    /// `bundle`: where the container's config.json is or will be, noted with the maker
    /// so that what a killed maker leaves can be found (runtime::unmade).
    pub fn take_id(&self, id: &str, bundle: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).ctx(|| format!("create {}", self.root.display()))?;
        let dir = self.container_dir(id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(self.taken_error(id)),
            r => {
                r.ctx(|| format!("create {}", dir.display()))?;
                self.note_maker(&dir, bundle);
                Ok(dir)
            }
        }
    }

    /// Gives back an id taken with [`Runtime::take_id`] when no container came of it: its
    /// state directory goes if nothing but the maker's note is in it (a container that was
    /// made owns it). Returns whether it went.
    pub fn give_back_id(&self, id: &str) -> bool {
        let dir = self.container_dir(id);
        let _ = std::fs::remove_file(dir.join(crate::runtime::unmade::MAKER_FILE));
        std::fs::remove_dir(dir).is_ok()
    }

    /// Holds container `id` for an operation that freezes, thaws or ends it (checkpoint,
    /// pause, resume, delete), and loads it afresh: two such operations at once would
    /// undo each other (a second checkpoint thawing what the first froze, or dumping a
    /// container the first has killed). The hold is an flock on the state directory,
    /// released when dropped or when the process dies. `wait`: wait for another holder to
    /// let go (the container may be gone then); otherwise fail with [`Error::Busy`].
    pub fn hold(&self, id: &str, wait: bool) -> Result<(Hold, Container)> {
        use std::os::unix::fs::MetadataExt;
        validate_id(id)?;
        let dir = self.container_dir(id);
        loop {
            // std opens with O_CLOEXEC: CRIU and hooks started meanwhile do not inherit it.
            let file = match std::fs::File::open(&dir) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.not_found(id));
                }
                Err(e) => return Err(e).ctx(|| format!("open {}", dir.display())),
            };
            let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), op) } != 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => Err(Error::Busy {
                        id: id.to_string(),
                        by: holder(&dir).unwrap_or_else(|| "another ferry".into()),
                    }),
                    _ => Err(e).ctx(|| format!("lock {}", dir.display())),
                };
            }
            // The holder before us may have deleted the container, and another made one
            // of the same id since: only the directory that is there now counts.
            let held = file.metadata().ctx(|| format!("stat {}", dir.display()))?;
            match std::fs::metadata(&dir) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    // An id taken but not (yet) made into a container is NotFound here,
                    // before any note lands in its directory.
                    let container = self.load(id)?;
                    // Who holds it, for the message of whoever finds it busy.
                    let note = dir.join(HOLDER_FILE);
                    let me = crate::sys::proc::cmdline("self");
                    let _ = std::fs::write(&note, format!("{}: {me}", std::process::id()));
                    let hold = Hold {
                        _dir: file,
                        note: Some(note),
                    };
                    return Ok((hold, container));
                }
                _ => continue,
            }
        }
    }

    fn not_found(&self, id: &str) -> Error {
        Error::NotFound {
            id: id.to_string(),
            root: self.root.clone(),
        }
    }

    pub fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_found(id));
            }
            Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
        };
        let record: Record = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            msg: format!("corrupt container state ({e}); `ferry delete --force {id}` removes it"),
        })?;
        Ok(Container {
            runtime: self.clone(),
            id: id.to_string(),
            dir,
            record,
        })
    }

    /// Every container under the root, sorted by id; unreadable entries are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Container>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).ctx(|| format!("read {}", self.root.display())),
        };
        let mut out = vec![];
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().join(STATE_FILE).exists() {
                continue;
            }
            match self.load(&name) {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!("skipping {name}: {e}"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

impl Container {
    pub fn spec(&self) -> Result<Spec> {
        Ok(self.record.spec.clone())
    }

    pub fn pid(&self) -> i32 {
        self.record.pid
    }

    pub fn cgroup(&self) -> Result<Box<dyn Cgroup>> {
        cgroup_of(&self.record.spec, &self.id)
    }

    pub fn is_init_alive(&self) -> bool {
        proc::is_alive(self.record.pid, self.record.pid_start)
    }

    pub fn status(&self) -> Result<Status> {
        if !self.is_init_alive() {
            return Ok(Status::Stopped);
        }
        if self.dir.join(EXEC_FIFO).exists() {
            return Ok(Status::Created);
        }
        if self.cgroup()?.is_frozen().unwrap_or(false) {
            return Ok(Status::Paused);
        }
        Ok(Status::Running)
    }

    pub fn state(&self) -> Result<OciState> {
        let status = self.status()?;
        let mut state = self.state_with(status);
        if status == Status::Stopped {
            // runc reports no pid for a stopped container: the number may belong to another
            // process by now.
            state.pid = 0;
        }
        Ok(state)
    }

    /// The status recorded by the ferry process that supervised the container (`run`).
    pub fn exit_code(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(EXIT_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Host pids of every process of the container.
    pub fn processes(&self) -> Result<Vec<i32>> {
        let mut pids = self.cgroup()?.pids()?;
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let status = self.status()?;
        if status == Status::Stopped {
            return Err(self.invalid("update", status, ""));
        }
        self.cgroup()?.set(resources)
    }

    /// The container's upper dir and lower dirs (top first): from ferry's own record for an
    /// image container, else from the overlay mounted at its rootfs (podman's containers).
    pub fn rootfs_layers(&self) -> Result<(PathBuf, Vec<PathBuf>)> {
        if let Some(img) = &self.record.image {
            return Ok((img.overlay.upper.clone(), img.overlay.lowers.clone()));
        }
        match crate::runtime::overlay::Overlay::find(&self.record.rootfs)? {
            Some(o) => Ok((o.upper, o.lowers)),
            None => Err(Error::Other(format!(
                "the rootfs of {:?} ({}) is not an overlay mount, so its own changes cannot \
                 be told from its image's; run it from an image (`ferry run --image`) or on \
                 an overlay",
                self.id,
                self.record.rootfs.display()
            ))),
        }
    }

    pub(crate) fn invalid(&self, op: &'static str, status: Status, hint: &'static str) -> Error {
        Error::InvalidState {
            id: self.id.clone(),
            op,
            status: status.to_string(),
            hint,
        }
    }

    pub(crate) fn save(&self) -> Result<()> {
        write_record(&self.dir, &self.record)
    }
}

pub(crate) fn cgroup_of(spec: &Spec, id: &str) -> Result<Box<dyn Cgroup>> {
    let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    cgroups::for_container(path.as_deref(), id)
}

/// Writes the record atomically (temp file + rename) so a reader never sees half of it.
pub(crate) fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let tmp = dir.join(".state.json.tmp");
    let text = serde_json::to_vec(record).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&tmp, text).ctx(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).ctx(|| format!("rename {}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("c1").is_ok());
        assert!(validate_id("a.b_c+d-e").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
