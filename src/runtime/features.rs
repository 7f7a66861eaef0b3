//! `ferry features`: the OCI runtime features document.
//!
//! Lists only what ferry acts on, so a client that checks before it asks is not misled:
//! no systemd cgroup driver, no AppArmor or SELinux labelling, no seccomp notify.

use serde_json::json;

/// Hooks run in spec order (runtime-spec `config.md#posix-platform-hooks`).
const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Mount options the runtime turns into mount flags or propagation changes; anything else
/// is passed to the filesystem as data.
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// The actions and comparisons `seccompiler` can express.
const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];
const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
const SECCOMP_ARCHS: &[&str] = &["SCMP_ARCH_AARCH64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_X86_64"];

/// The features JSON (runtime-spec `features.md`) describing what this build supports.
pub fn features() -> serde_json::Value {
    let capabilities: Vec<String> = {
        let mut all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        all.sort();
        all
    };
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": HOOKS,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities,
            "cgroup": {
                "v1": true,
                "v2": true,
                "systemd": false,
                "systemdUser": false,
                "rdma": false
            },
            "seccomp": {
                "enabled": true,
                "actions": SECCOMP_ACTIONS,
                "operators": SECCOMP_OPERATORS,
                "archs": SECCOMP_ARCHS,
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false }
        },
        "annotations": {
            "org.ferry.version": env!("CARGO_PKG_VERSION"),
            // Becomes "true" once `ferry checkpoint`/`restore` exist (issue #4).
            "org.ferry.checkpoint.enabled": "false"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_as_the_oci_document() {
        let v = features();
        let parsed: oci_spec::runtime::Features = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(parsed.oci_version_min(), "1.0.0");
        assert_eq!(v["linux"]["cgroup"]["systemd"], false);
        assert_eq!(v["linux"]["apparmor"]["enabled"], false);
        let caps = v["linux"]["capabilities"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
    }
}
