//! Loading `config.json` and making the default one (`ferry spec`).

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResources, Spec,
};

/// The spec `ferry spec` writes: like `runc spec`, a busybox-friendly `sh` in a new set of
/// namespaces with the usual mounts, masked paths and capabilities.
///
/// oci-spec's `Spec::default()` already carries runc's mounts, masked and readonly paths,
/// namespaces and the NOFILE rlimit; what differs from runc is adjusted here.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_hostname(Some("ferry".to_string()));
    spec.set_annotations(None);

    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(true));
        process.set_no_new_privileges(Some(true));
        // runc grants these three in the bounding, effective and permitted sets only: with
        // inheritable and ambient empty, an unprivileged exec'd binary gains nothing.
        let caps: Capabilities = [
            Capability::AuditWrite,
            Capability::Kill,
            Capability::NetBindService,
        ]
        .into_iter()
        .collect();
        let mut linux_caps = LinuxCapabilities::default();
        linux_caps.set_bounding(Some(caps.clone()));
        linux_caps.set_effective(Some(caps.clone()));
        linux_caps.set_permitted(Some(caps));
        linux_caps.set_inheritable(None);
        linux_caps.set_ambient(None);
        process.set_capabilities(Some(linux_caps));
    }

    if let Some(linux) = spec.linux_mut() {
        // Deny every device by default; the runtime adds the standard ones back.
        let mut resources = LinuxResources::default();
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_allow(false);
        deny_all.set_access(Some("rwm".to_string()));
        resources.set_devices(Some(vec![deny_all]));
        linux.set_resources(Some(resources));
    }

    if rootless {
        make_rootless(&mut spec);
    }
    spec
}

/// What `runc spec --rootless` changes: a user namespace mapping the caller to root, no
/// network namespace, `/sys` bind-mounted (sysfs cannot be mounted without owning the
/// network namespace), no `uid=`/`gid=` mount options, and no cgroup resources.
fn make_rootless(spec: &mut Spec) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();

    if let Some(linux) = spec.linux_mut() {
        let mut namespaces: Vec<LinuxNamespace> = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| {
                !matches!(
                    ns.typ(),
                    LinuxNamespaceType::Network | LinuxNamespaceType::User
                )
            })
            .collect();
        let mut user = LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        namespaces.push(user);
        linux.set_namespaces(Some(namespaces));
        linux.set_uid_mappings(Some(vec![id_mapping(uid)]));
        linux.set_gid_mappings(Some(vec![id_mapping(gid)]));
        linux.set_resources(None);
    }

    if let Some(mounts) = spec.mounts_mut() {
        for mount in mounts.iter_mut() {
            if mount.destination() == std::path::Path::new("/sys") {
                mount.set_typ(Some("none".to_string()));
                mount.set_source(Some("/sys".into()));
                mount.set_options(Some(
                    ["rbind", "nosuid", "noexec", "nodev", "ro"]
                        .map(String::from)
                        .to_vec(),
                ));
                continue;
            }
            if let Some(options) = mount.options().clone() {
                let kept = options
                    .into_iter()
                    .filter(|o| !o.starts_with("uid=") && !o.starts_with("gid="))
                    .collect();
                mount.set_options(Some(kept));
            }
        }
    }
}

fn id_mapping(host_id: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host_id)
        .size(1u32)
        .build()
        .expect("every field of an id mapping is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|ns| ns.typ())
            .collect()
    }

    #[test]
    fn default_spec_matches_runc_spec() {
        let spec = default_spec(false);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["sh".to_string()]);
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.cwd(), std::path::Path::new("/"));
        let env = process.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(env.contains(&"TERM=xterm".to_string()));
        assert_eq!(spec.hostname().as_deref(), Some("ferry"));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), std::path::Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Kill)
        );

        let destinations: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(destinations.contains(&d.to_string()), "missing mount {d}");
        }
        let types = namespace_types(&spec);
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(types.contains(&t), "missing namespace {t:?}");
        }
        assert!(!types.contains(&LinuxNamespaceType::User));

        // Serialises to JSON that reads back unchanged (what `ferry spec` writes).
        let json = serde_json::to_string_pretty(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn rootless_spec_maps_the_caller_and_drops_what_needs_privilege() {
        let spec = default_spec(true);
        let types = namespace_types(&spec);
        assert!(types.contains(&LinuxNamespaceType::User));
        assert!(!types.contains(&LinuxNamespaceType::Network));
        let linux = spec.linux().as_ref().unwrap();
        let uid_map = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(uid_map.host_id(), nix::unistd::geteuid().as_raw());
        assert_eq!(uid_map.size(), 1);
        assert!(linux.resources().is_none());
        for m in spec.mounts().as_ref().unwrap() {
            let opts = m.options().clone().unwrap_or_default();
            assert!(!opts.iter().any(|o| o.starts_with("gid=")));
            if m.destination() == std::path::Path::new("/sys") {
                assert!(opts.contains(&"rbind".to_string()));
            }
        }
    }
}
