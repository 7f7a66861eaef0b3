//! `ferry spec`: write the default `config.json`, as `runc spec` does.

use crate::runtime::{Error, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// `--rootless` (a spec for an unprivileged user: user namespace, no network namespace) is
/// the global flag, passed to [`SpecArgs::run`].
#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct SpecArgs {
    /// Directory to write config.json into [default: the current directory]
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

impl SpecArgs {
    pub fn run(self, rootless: bool) -> Result<i32> {
        let dir = super::bundle_or_cwd(self.bundle)?;
        let path = dir.join("config.json");
        let spec = crate::runtime::spec::default_spec(rootless);
        let mut json = serde_json::to_string_pretty(&spec).map_err(|e| Error::Config {
            path: path.clone(),
            msg: format!("serialise the default spec: {e}"),
        })?;
        json.push('\n');
        // create_new: never overwrite a config.json someone wrote by hand.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Other(format!(
                        "{} exists; remove it first, ferry spec does not overwrite it",
                        path.display()
                    ))
                } else {
                    Error::Io {
                        context: format!("create {}", path.display()),
                        source,
                    }
                }
            })?;
        file.write_all(json.as_bytes())
            .map_err(|source| Error::Io {
                context: format!("write {}", path.display()),
                source,
            })?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = || SpecArgs {
            bundle: Some(dir.path().to_path_buf()),
        };
        assert_eq!(args().run(false).unwrap(), 0);
        let written: oci_spec::runtime::Spec =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written.hostname().as_deref(), Some("ferry"));
        let err = args().run(false).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
    }
}
