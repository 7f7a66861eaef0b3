//! Containers made from an image in the store: ferry writes the bundle itself (config.json
//! from the image config on top of `ferry spec` defaults) with an overlay rootfs whose upper
//! dir holds the container's own changes.

use crate::image::{Image, Store};
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::overlay::{self, Overlay};
use crate::runtime::{Runtime, spec};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What ferry made on the host for an image container, removed again by `delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRootfs {
    pub image: String,
    pub digest: String,
    pub storage: PathBuf,
    /// `<storage>/containers/<id>`: config.json, rootfs (the overlay mount), upper, work.
    pub bundle: PathBuf,
    pub overlay: Overlay,
}

/// `ferry run/create --image NAME [--name ID] [-- CMD…]`.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    pub image: String,
    pub id: Option<String>,
    /// Replaces the image's Cmd (its Entrypoint stays), as `docker run IMAGE CMD` does.
    pub command: Vec<String>,
    pub tty: bool,
}

impl Runtime {
    /// Makes the bundle of a new container from an image: returns its id, taken
    /// ([`Runtime::take_id`]: create with `id_taken`), and what was made. On error nothing is
    /// left behind.
    pub fn prepare_image_bundle(&self, req: &ImageRequest) -> Result<(String, ImageRootfs)> {
        let store = Store::open(&self.storage).map_err(|e| Error::Other(e.to_string()))?;
        let image = store
            .get(&req.image)
            .map_err(|e| Error::Other(e.to_string()))?;
        let id = match &req.id {
            Some(id) => id.clone(),
            None => random_id()?,
        };
        crate::runtime::container::validate_id(&id)?;
        // The id first: of two commands making it at once, the second is told it exists
        // rather than finding the first one's rootfs directory half made.
        self.take_id(&id, &bundle_of(&self.storage, &id))?;
        let made = ImageRootfs::create(&self.storage, &image, &id).and_then(|rootfs| {
            let bundle = rootfs.bundle.clone();
            let written = (|| {
                let spec = spec_for(&image, req, &id, &bundle.join("rootfs"))?;
                let text =
                    serde_json::to_vec_pretty(&spec).map_err(|e| Error::Other(e.to_string()))?;
                std::fs::write(bundle.join("config.json"), text).ctx(|| "write config.json")?;
                store
                    .add_ref(&image, &id)
                    .map_err(|e| Error::Other(e.to_string()))
            })();
            match written {
                Ok(()) => Ok(rootfs),
                Err(e) => Err(crate::runtime::create::with_cleanup(e, rootfs.release(&id))),
            }
        });
        if made.is_err() {
            self.give_back_id(&id);
        }
        made.map(|rootfs| (id, rootfs))
    }
}

impl ImageRootfs {
    /// `<storage>/containers/<id>`: an empty upper dir over the image's layers, mounted at
    /// `rootfs`. On error nothing is left.
    pub fn create(storage: &Path, image: &Image, id: &str) -> Result<ImageRootfs> {
        let bundle = bundle_of(storage, id);
        let containers = bundle.parent().unwrap_or(storage);
        std::fs::create_dir_all(containers).ctx(|| format!("create {}", containers.display()))?;
        match std::fs::create_dir(&bundle) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Other(format!(
                    "{} exists: a container {id:?} was not cleaned up; remove the directory \
                     or pick another name",
                    bundle.display()
                )));
            }
            r => r.ctx(|| format!("create {}", bundle.display()))?,
        }
        let made = ImageRootfs {
            image: image.name.clone(),
            digest: image.manifest_digest.clone(),
            storage: storage.to_path_buf(),
            bundle: bundle.clone(),
            overlay: Overlay {
                lowers: image.layers.iter().rev().cloned().collect(),
                upper: bundle.join("upper"),
                work: bundle.join("work"),
            },
        };
        let r = (|| {
            for d in ["rootfs", "upper", "work"] {
                std::fs::create_dir(bundle.join(d)).ctx(|| format!("create {d}"))?;
            }
            // The upper dir is the root's copy-up target: with the image root's mode and
            // owner, an untouched root is not reported as changed.
            if let Some(top) = made.overlay.lowers.first() {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(top).ctx(|| format!("stat {}", top.display()))?;
                std::os::unix::fs::chown(&made.overlay.upper, Some(m.uid()), Some(m.gid()))
                    .ctx(|| "chown the upper dir")?;
                std::fs::set_permissions(
                    &made.overlay.upper,
                    std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777),
                )
                .ctx(|| "chmod the upper dir")?;
            }
            made.overlay.mount(&bundle.join("rootfs"))
        })();
        match r {
            Ok(()) => Ok(made),
            Err(e) => Err(crate::runtime::create::with_cleanup(e, made.release(id))),
        }
    }

    /// Unmounts the overlay, removes the bundle (and with it the container's changes) and
    /// drops the container's reference on the image.
    pub fn release(&self, id: &str) -> Result<()> {
        release_bundle(&self.storage, &self.bundle, id)
    }
}

/// Where the bundle of image container `id` is: `<storage>/containers/<id>`.
pub fn bundle_of(storage: &Path, id: &str) -> PathBuf {
    storage.join("containers").join(id)
}

/// [`ImageRootfs::release`] from the paths alone (what a killed maker left, runtime::unmade).
pub(crate) fn release_bundle(storage: &Path, bundle: &Path, id: &str) -> Result<()> {
    overlay::unmount(&bundle.join("rootfs"))?;
    match std::fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx(|| format!("remove {}", bundle.display()));
        }
        _ => {}
    }
    if let Ok(store) = Store::open(storage) {
        store
            .remove_ref(id)
            .map_err(|e| Error::Other(e.to_string()))?;
    }
    Ok(())
}

/// config.json for an image container: `ferry spec` defaults, then the image config.
pub fn spec_for(image: &Image, req: &ImageRequest, id: &str, rootfs: &Path) -> Result<Spec> {
    let mut spec = spec::default_spec(false);
    let cfg = image.config.config().clone().unwrap_or_default();
    let entrypoint = cfg.entrypoint().clone().unwrap_or_default();
    let cmd = if req.command.is_empty() {
        cfg.cmd().clone().unwrap_or_default()
    } else {
        req.command.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Other(format!(
            "image {} has no Entrypoint or Cmd: give a command after `--`",
            image.name
        )));
    }
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_terminal(Some(req.tty));
    let mut env = process.env().clone().unwrap_or_default();
    for kv in cfg.env().clone().unwrap_or_default() {
        let key = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    }
    process.set_env(Some(env));
    if let Some(dir) = cfg.working_dir().as_ref().filter(|d| !d.is_empty()) {
        process.set_cwd(PathBuf::from(dir));
    }
    if let Some(user) = cfg.user().as_ref().filter(|u| !u.is_empty()) {
        let (uid, gid) = resolve_user(rootfs, user)?;
        process.user_mut().set_uid(uid);
        process.user_mut().set_gid(gid);
    }
    spec.set_process(Some(process));
    spec.set_hostname(Some(id.chars().take(63).collect()));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut ann = spec.annotations().clone().unwrap_or_default();
    ann.insert("org.ferry.image.name".into(), image.name.clone());
    ann.insert(
        "org.ferry.image.digest".into(),
        image.manifest_digest.clone(),
    );
    spec.set_annotations(Some(ann));
    Ok(spec)
}

/// `uid`, `uid:gid`, `name` or `name:group`, names looked up in the image's own
/// /etc/passwd and /etc/group.
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let path = crate::runtime::rootfs::secure_join(rootfs, Path::new(file));
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_by_uid(rootfs, n).unwrap_or(0)),
        Err(_) => lookup("/etc/passwd", u).ok_or_else(|| {
            Error::Other(format!(
                "image user {u:?} is not in the image's /etc/passwd"
            ))
        })?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_group(rootfs, g).ok_or_else(|| {
                Error::Other(format!(
                    "image group {g:?} is not in the image's /etc/group"
                ))
            })?,
        },
    };
    Ok((uid, gid))
}

fn lookup_group(rootfs: &Path, name: &str) -> Option<u32> {
    let path = crate::runtime::rootfs::secure_join(rootfs, Path::new("/etc/group"));
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

fn lookup_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let path = crate::runtime::rootfs::secure_join(rootfs, Path::new("/etc/passwd"));
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid))
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .ctx(|| "read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(d.path(), "web").unwrap(), (33, 44));
        assert_eq!(resolve_user(d.path(), "33").unwrap(), (33, 44));
        assert_eq!(resolve_user(d.path(), "web:staff").unwrap(), (33, 50));
        assert_eq!(resolve_user(d.path(), "1000:7").unwrap(), (1000, 7));
        assert!(resolve_user(d.path(), "nobody").is_err());
    }
}
