//! `ferry.manifest`: the last entry of a checkpoint archive. It lists every other entry with
//! its sha256 and size, says where and with what the checkpoint was made, and carries the
//! source host's ed25519 signature over those bytes. Restore checks all of it before CRIU
//! reads anything.

use crate::identity::{self, Fingerprint, Identity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 2: memory pages come as `pages-<id>.img.part<N>` entries (archive::pages); a ferry that
/// reads only format 1 must refuse them rather than hand CRIU a split image.
/// 3: the parts are listed in their image's index (`pages-<id>.img.index`, archive::pages)
/// and only the index here; a ferry that reads only format 2 would find the parts unlisted.
pub const FORMAT_VERSION: u32 = 3;

/// The first format whose pages parts are listed by their image's index.
pub const INDEXED_PARTS: u32 = 3;
pub const MANIFEST_NAME: &str = "ferry.manifest";

/// The largest `ferry.manifest` a restore reads (it is read whole, before its signature
/// can be checked). A checkpoint whose manifest would be larger fails before it releases
/// anything: an archive no restore would read must not replace the container. Since
/// format 3 the manifest lists one index per pages image, not every 1 MiB part, so its
/// size no longer grows with the container's memory.
pub const MAX_SIGNED_SIZE: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SourceHost {
    pub hostname: String,
    pub kernel: String,
    pub arch: String,
    /// CPU feature flags from /proc/cpuinfo: a target lacking one of them may not run the
    /// restored process (CRIU checks this too, later and less clearly).
    pub cpu_flags: Vec<String>,
    pub ferry_version: String,
    pub criu_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRef {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub created: chrono::DateTime<chrono::Utc>,
    pub container: String,
    pub image: Option<ImageRef>,
    pub source: SourceHost,
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What is stored: the manifest as exact bytes, so the signature covers what was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The manifest JSON, as signed.
    pub manifest: String,
    /// The signer's raw ed25519 public key, hex.
    pub public_key: String,
    /// ed25519 signature of `manifest`'s bytes, hex.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ferry.manifest is not valid: {0}")]
    Malformed(String),
    #[error(
        "archive format {0} is newer than this ferry understands ({FORMAT_VERSION}); upgrade ferry"
    )]
    Format(u32),
    #[error("ferry.manifest: {0}")]
    Signature(#[from] identity::Error),
}

impl SignedManifest {
    pub fn sign(m: &Manifest, id: &Identity) -> SignedManifest {
        let manifest = serde_json::to_string_pretty(m).expect("manifest serialises");
        let signature = id.sign(manifest.as_bytes());
        SignedManifest {
            manifest,
            public_key: hex::encode(id.public_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Checks the signature and returns the manifest with its signer. Trust is the caller's
    /// decision; this only proves who signed what.
    pub fn verify(&self) -> Result<(Manifest, Fingerprint), Error> {
        let pk = hex::decode(&self.public_key)
            .map_err(|e| Error::Malformed(format!("public key: {e}")))?;
        let sig = hex::decode(&self.signature)
            .map_err(|e| Error::Malformed(format!("signature: {e}")))?;
        let signer = identity::verify(&pk, self.manifest.as_bytes(), &sig)?;
        let m: Manifest =
            serde_json::from_str(&self.manifest).map_err(|e| Error::Malformed(e.to_string()))?;
        if m.format > FORMAT_VERSION {
            return Err(Error::Format(m.format));
        }
        Ok((m, signer))
    }
}

impl SourceHost {
    pub fn this_host(criu_version: String) -> SourceHost {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let uts = nix::sys::utsname::uname().ok();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        SourceHost {
            hostname: uts
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            arch: std::env::consts::ARCH.to_string(),
            cpu_flags,
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            criu_version,
        }
    }

    /// CPU flags the source had and this host lacks.
    pub fn missing_cpu_flags(&self, here: &SourceHost) -> Vec<String> {
        self.cpu_flags
            .iter()
            .filter(|f| !here.cpu_flags.contains(f))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            created: chrono::Utc::now(),
            container: "c1".into(),
            image: None,
            source: SourceHost::this_host("4.1.1".into()),
            entries: vec![Entry {
                name: "checkpoint/inventory.img".into(),
                sha256: "00".repeat(32),
                size: 10,
            }],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn signed_manifest_round_trip_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let s = SignedManifest::sign(&manifest(), &id);
        let (m, who) = s.verify().unwrap();
        assert_eq!(who, id.fingerprint());
        assert_eq!(m.entries[0].size, 10);
        let mut bad = s.clone();
        bad.manifest = bad.manifest.replace("\"size\": 10", "\"size\": 11");
        assert!(matches!(bad.verify(), Err(Error::Signature(_))));
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let mut swapped = s.clone();
        swapped.public_key = hex::encode(other.public_key().as_bytes());
        assert!(
            swapped.verify().is_err(),
            "another key cannot claim the signature"
        );
    }

    #[test]
    fn this_host_has_facts() {
        let h = SourceHost::this_host(String::new());
        assert!(!h.kernel.is_empty());
        assert_eq!(h.arch, std::env::consts::ARCH);
        assert!(h.missing_cpu_flags(&h).is_empty());
    }
}
