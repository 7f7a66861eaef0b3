//! The host's identity: one ed25519 key per host, made on first use. It signs checkpoint
//! archives now and will authenticate migration peers later, so a host is known by one
//! fingerprint everywhere. Trusted signers are kept by fingerprint under the store.

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host key {path}: {msg}; move it aside and a new identity is made on next use")]
    BadKey { path: PathBuf, msg: String },
    #[error("{0:?} is not a fingerprint: give the 64 hex digits `ferry identity` prints")]
    BadFingerprint(String),
    #[error("no trusted signer matches {0:?}; `ferry trust ls` lists them")]
    NotTrusted(String),
    #[error("signature check failed: {0}")]
    BadSignature(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<T>(r: std::io::Result<T>, context: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| Error::Io {
        context: context(),
        source,
    })
}

/// sha256 of the raw 32-byte public key, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    pub fn of(key: &VerifyingKey) -> Fingerprint {
        Fingerprint(hex::encode(Sha256::digest(key.as_bytes())))
    }

    pub fn parse(s: &str) -> Result<Fingerprint> {
        let s = s.trim().trim_start_matches("sha256:").to_ascii_lowercase();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Fingerprint(s))
        } else {
            Err(Error::BadFingerprint(s))
        }
    }

    /// The first 16 hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// `<storage>/identity/host.key` (PKCS#8 PEM, 0600), made on first use.
    pub fn load_or_create(storage: &Path) -> Result<Identity> {
        let dir = storage.join("identity");
        let path = dir.join("host.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::BadKey {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
                Ok(Identity { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                io(std::fs::create_dir_all(&dir), || {
                    format!("create {}", dir.display())
                })?;
                let mut secret = [0u8; 32];
                io(
                    std::fs::File::open("/dev/urandom")
                        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret)),
                    || "read /dev/urandom".into(),
                )?;
                let key = SigningKey::from_bytes(&secret);
                let pem = key
                    .to_pkcs8_pem(Default::default())
                    .map_err(|e| Error::BadKey {
                        path: path.clone(),
                        msg: e.to_string(),
                    })?;
                // create_new: two processes racing to make the key must not both win.
                let tmp = dir.join(format!(".host.key.{}", std::process::id()));
                let mut f = io(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp),
                    || format!("create {}", tmp.display()),
                )?;
                io(f.write_all(pem.as_bytes()), || {
                    format!("write {}", tmp.display())
                })?;
                io(f.sync_all(), || format!("sync {}", tmp.display()))?;
                drop(f);
                // link fails if another process made the key first: then use theirs.
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Identity { key }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Identity::load_or_create(storage)
                    }
                    Err(e) => io(Err(e), || format!("install {}", path.display())),
                }
            }
            Err(e) => io(Err(e), || format!("read {}", path.display())),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public_key())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

/// Checks `signature` of `message` by the key `public_key` (32 raw bytes), strictly.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<Fingerprint> {
    let pk: [u8; 32] = public_key
        .try_into()
        .map_err(|_| Error::BadSignature("the public key is not 32 bytes".into()))?;
    let key = VerifyingKey::from_bytes(&pk)
        .map_err(|e| Error::BadSignature(format!("invalid public key: {e}")))?;
    let sig = Signature::from_slice(signature)
        .map_err(|e| Error::BadSignature(format!("malformed signature: {e}")))?;
    key.verify_strict(message, &sig)
        .map_err(|_| Error::BadSignature("the signature does not match the content".into()))?;
    Ok(Fingerprint::of(&key))
}

/// One trusted signer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustedSigner {
    pub fingerprint: Fingerprint,
    #[serde(default)]
    pub name: String,
    pub added: chrono::DateTime<chrono::Utc>,
}

/// `<storage>/trust/<fingerprint>.json`, one file per signer: adding and removing never
/// rewrite a shared file.
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    pub fn open(storage: &Path) -> TrustStore {
        TrustStore {
            dir: storage.join("trust"),
        }
    }

    pub fn add(&self, fp: &Fingerprint, name: &str) -> Result<TrustedSigner> {
        io(std::fs::create_dir_all(&self.dir), || {
            format!("create {}", self.dir.display())
        })?;
        let signer = TrustedSigner {
            fingerprint: fp.clone(),
            name: name.to_string(),
            added: chrono::Utc::now(),
        };
        let path = self.dir.join(format!("{fp}.json"));
        let tmp = self.dir.join(format!(".{fp}.{}", std::process::id()));
        io(
            std::fs::write(&tmp, serde_json::to_vec_pretty(&signer).unwrap_or_default()),
            || format!("write {}", tmp.display()),
        )?;
        io(std::fs::rename(&tmp, &path), || {
            format!("write {}", path.display())
        })?;
        Ok(signer)
    }

    /// Removes by full fingerprint, unique prefix (at least 8 digits) or name.
    pub fn remove(&self, what: &str) -> Result<TrustedSigner> {
        let s = self.find(what)?;
        let path = self.dir.join(format!("{}.json", s.fingerprint));
        io(std::fs::remove_file(&path), || {
            format!("remove {}", path.display())
        })?;
        Ok(s)
    }

    pub fn find(&self, what: &str) -> Result<TrustedSigner> {
        let what = what.trim().trim_start_matches("sha256:");
        let all = self.list()?;
        let matches: Vec<_> = all
            .into_iter()
            .filter(|s| {
                s.name == what
                    || (what.len() >= 8 && s.fingerprint.0.starts_with(&what.to_ascii_lowercase()))
            })
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().unwrap()),
            _ => Err(Error::NotTrusted(what.to_string())),
        }
    }

    pub fn is_trusted(&self, fp: &Fingerprint) -> Result<Option<TrustedSigner>> {
        Ok(self.list()?.into_iter().find(|s| &s.fingerprint == fp))
    }

    pub fn list(&self) -> Result<Vec<TrustedSigner>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return io(Err(e), || format!("read {}", self.dir.display())),
        };
        let mut out = vec![];
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(text) = std::fs::read(&p)
                && let Ok(s) = serde_json::from_slice::<TrustedSigner>(&text)
            {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.fingerprint.cmp(&b.fingerprint)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_signs() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path()).unwrap();
        let b = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "the same key on second use"
        );
        let meta = std::fs::metadata(d.path().join("identity/host.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let sig = a.sign(b"manifest");
        let fp = verify(a.public_key().as_bytes(), b"manifest", &sig.to_bytes()).unwrap();
        assert_eq!(fp, a.fingerprint());
        assert!(verify(a.public_key().as_bytes(), b"manifesT", &sig.to_bytes()).is_err());
    }

    #[test]
    fn trust_add_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let t = TrustStore::open(d.path());
        let fp = Fingerprint::parse(&"ab".repeat(32)).unwrap();
        assert!(t.is_trusted(&fp).unwrap().is_none());
        t.add(&fp, "host-b").unwrap();
        assert!(t.is_trusted(&fp).unwrap().is_some());
        assert_eq!(t.find("host-b").unwrap().fingerprint, fp);
        assert_eq!(t.find("abababab").unwrap().fingerprint, fp);
        assert!(t.find("abab").is_err(), "too short a prefix");
        t.remove("host-b").unwrap();
        assert!(t.list().unwrap().is_empty());
        assert!(Fingerprint::parse("xyz").is_err());
    }
}
