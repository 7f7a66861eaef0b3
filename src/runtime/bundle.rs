//! A bundle directory: `config.json` parsed and checked, and the rootfs it names.

use crate::runtime::error::{Error, Result};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `<dir>/config.json`. Every error names the file and, where it can, the field.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::path::absolute(dir).map_err(|e| Error::Io {
            context: format!("bundle {}", dir.display()),
            source: e,
        })?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
            path: path.clone(),
            msg: if e.kind() == std::io::ErrorKind::NotFound {
                "not found; a bundle needs a config.json (`ferry spec` writes one)".into()
            } else {
                e.to_string()
            },
        })?;
        let spec = parse_spec(&text).map_err(|msg| Error::Config {
            path: path.clone(),
            msg,
        })?;
        let root = spec.root().as_ref().ok_or_else(|| Error::Config {
            path: path.clone(),
            msg: "field `root` is missing: it names the container's root filesystem".into(),
        })?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(Error::Config {
                path,
                msg: format!("field `root.path`: {} is not a directory", rootfs.display()),
            });
        }
        let rootfs = rootfs.canonicalize().map_err(|e| Error::Io {
            context: format!("rootfs {}", rootfs.display()),
            source: e,
        })?;
        check(&spec).map_err(|msg| Error::Config {
            path: path.clone(),
            msg,
        })?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Whether the spec's process has a terminal (`process.terminal`).
pub fn has_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// Parses config.json text; a failure names the field by its JSON path (`process.args`).
pub fn parse_spec(text: &str) -> std::result::Result<Spec, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, Spec>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            format!(
                "invalid JSON at line {} column {}: {inner}",
                inner.line(),
                inner.column()
            )
        } else {
            format!("field `{path}`: {inner}")
        }
    })
}

/// What the spec must say for ferry to run it.
fn check(spec: &Spec) -> std::result::Result<(), String> {
    let process = spec
        .process()
        .as_ref()
        .ok_or("field `process` is missing: it says what to run")?;
    match process.args() {
        Some(a) if !a.is_empty() => {}
        _ => return Err("field `process.args` is empty: name the program to run".into()),
    }
    if !process.cwd().is_absolute() {
        return Err(format!(
            "field `process.cwd`: {:?} must be an absolute path",
            process.cwd()
        ));
    }
    if spec.linux().is_none() {
        return Err("field `linux` is missing: ferry runs Linux containers only".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_json_names_line() {
        let e = parse_spec("{\n \"ociVersion\": \"1.0.2\",\n oops }").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_names_field() {
        let e =
            parse_spec(r#"{"ociVersion":"1.0.2","process":{"args":"sh","cwd":"/"}}"#).unwrap_err();
        assert!(e.contains("`process.args`"), "{e}");
    }

    #[test]
    fn missing_args_is_reported() {
        let spec = parse_spec(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0}},"linux":{}}"#,
        )
        .unwrap();
        assert!(check(&spec).unwrap_err().contains("process.args"));
    }
}
