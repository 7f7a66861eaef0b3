//! A fake cgroup tree of plain files in a temporary directory, for unit tests: it holds the
//! files a kernel would offer, and tests read back what the code wrote.

use super::{V1, V2};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    fn new() -> Self {
        FakeTree {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `rel`, creating parent directories.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }

    /// The trimmed content of `rel`; panics with the path when it is missing.
    pub fn read(&self, rel: &str) -> String {
        let path = self.root().join(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.root().join(rel).exists()
    }
}

/// v1: one directory per hierarchy, named like the kernel's mount (`cpu,cpuacct`).
pub struct FakeV1 {
    tree: FakeTree,
    mounts: BTreeMap<String, PathBuf>,
}

impl FakeV1 {
    pub fn new(hierarchies: &[&str]) -> Self {
        let tree = FakeTree::new();
        let mut mounts = BTreeMap::new();
        for hierarchy in hierarchies {
            let root = tree.root().join(hierarchy);
            std::fs::create_dir_all(&root).unwrap();
            for controller in hierarchy.split(',') {
                mounts.insert(controller.to_string(), root.clone());
            }
        }
        FakeV1 { tree, mounts }
    }

    pub fn cgroup(&self, rel: &str) -> V1 {
        V1::with_mounts(self.mounts.clone(), rel)
    }
}

impl std::ops::Deref for FakeV1 {
    type Target = FakeTree;
    fn deref(&self) -> &FakeTree {
        &self.tree
    }
}

/// v2: the unified root offering `controllers` in `cgroup.controllers`.
pub struct FakeV2 {
    tree: FakeTree,
}

impl FakeV2 {
    pub fn new(controllers: &[&str]) -> Self {
        let tree = FakeTree::new();
        tree.write(
            "cgroup.controllers",
            &format!("{}\n", controllers.join(" ")),
        );
        tree.write("cgroup.subtree_control", "");
        FakeV2 { tree }
    }

    /// Makes `rel` look like a cgroup the kernel created below an enabled parent.
    pub fn add_level(&self, rel: &str, controllers: &[&str]) {
        self.write(
            &format!("{rel}/cgroup.controllers"),
            &format!("{}\n", controllers.join(" ")),
        );
        self.write(&format!("{rel}/cgroup.subtree_control"), "");
        self.write(&format!("{rel}/cgroup.events"), "populated 0\nfrozen 0\n");
    }

    pub fn cgroup(&self, rel: &str) -> V2 {
        V2::at(self.root(), rel)
    }
}

impl std::ops::Deref for FakeV2 {
    type Target = FakeTree;
    fn deref(&self) -> &FakeTree {
        &self.tree
    }
}
