//! Image names (`busybox`, `busybox:1.36`, `registry:5000/team/app:v2`) and digest
//! queries (`sha256:ab12…`, `ab12…`), as `ferry image` and `--image` take them.

use super::{Error, Result};

pub const DEFAULT_TAG: &str = "latest";

/// `name:tag`, with `:latest` added when no tag is given. A `:` before the last `/` is a
/// registry port, not a tag.
pub fn normalise_name(name: &str) -> Result<String> {
    let invalid = |why| Error::InvalidName {
        what: "image name",
        value: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 255 {
        return Err(invalid("it is longer than 255 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    {
        return Err(invalid(
            "use letters, digits and . _ - / : (a digest goes on its own: sha256:…)",
        ));
    }
    let (repo, tag) = split_tag(name);
    if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') || repo.contains("//") {
        return Err(invalid("the repository part is empty or malformed"));
    }
    match tag {
        Some("") => Err(invalid("the tag after `:` is empty")),
        Some(tag) => Ok(format!("{repo}:{tag}")),
        None => Ok(format!("{repo}:{DEFAULT_TAG}")),
    }
}

/// (repository, tag) of a name; the tag is None when the name has none.
pub fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => (&name[..colon], Some(&name[colon + 1..])),
        _ => (name, None),
    }
}

/// The hex prefix a query names when it looks like a digest (`sha256:` + hex, or at least
/// 4 hex digits); None when it can only be a name.
pub fn digest_prefix(query: &str) -> Option<&str> {
    let (hex, explicit) = match query.strip_prefix("sha256:") {
        Some(rest) => (rest, true),
        None => (query, false),
    };
    let is_hex = !hex.is_empty()
        && hex.len() <= 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (is_hex && (explicit || hex.len() >= 4)).then_some(hex)
}

/// A default name from an image's file or directory name: `busybox.tar.gz` → `busybox:latest`.
pub fn name_from_path(path: &std::path::Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stem = base.as_str();
    for ext in [
        ".tar.gz",
        ".tar.zst",
        ".tar.zstd",
        ".tgz",
        ".tzst",
        ".tar",
        ".oci",
        ".rootfs",
    ] {
        if let Some(s) = stem.strip_suffix(ext) {
            stem = s;
            break;
        }
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
    if cleaned.is_empty() {
        format!("image:{DEFAULT_TAG}")
    } else {
        format!("{cleaned}:{DEFAULT_TAG}")
    }
}

/// The image name an index entry's annotations give: containerd's full name, else the OCI
/// `ref.name`, which skopeo and podman write as a bare tag (`latest`) or a full reference.
pub fn name_from_annotations(
    annotations: Option<&std::collections::HashMap<String, String>>,
    path: &std::path::Path,
) -> Option<String> {
    let a = annotations?;
    if let Some(full) = a.get("io.containerd.image.name") {
        return normalise_name(full).ok();
    }
    let r = a.get(oci_spec::image::ANNOTATION_REF_NAME)?;
    if r.contains('/') || r.contains(':') {
        return normalise_name(r).ok();
    }
    let base = name_from_path(path);
    let (repo, _) = split_tag(&base);
    normalise_name(&format!("{repo}:{r}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(normalise_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalise_name("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalise_name("localhost:5000/team/app").unwrap(),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(
            normalise_name("localhost:5000/team/app:v2").unwrap(),
            "localhost:5000/team/app:v2"
        );
        for bad in ["", "a b", "a:", "/a", "a//b", "x@sha256:abc", ":tag"] {
            assert!(normalise_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digest_queries_are_recognised() {
        assert_eq!(digest_prefix("sha256:ab"), Some("ab"));
        assert_eq!(digest_prefix("abcd12"), Some("abcd12"));
        assert_eq!(digest_prefix("abc"), None);
        assert_eq!(digest_prefix("busybox"), None);
        assert_eq!(digest_prefix("sha256:"), None);
        assert_eq!(digest_prefix("ABCD"), None);
    }

    #[test]
    fn default_names_come_from_annotations_or_the_path() {
        assert_eq!(
            name_from_path(Path::new("/x/busybox.tar.gz")),
            "busybox:latest"
        );
        assert_eq!(name_from_path(Path::new("/x/My Image/")), "my-image:latest");
        assert_eq!(name_from_path(Path::new("/")), "image:latest");
        let mut a = std::collections::HashMap::new();
        a.insert(
            oci_spec::image::ANNOTATION_REF_NAME.to_string(),
            "1.36".to_string(),
        );
        assert_eq!(
            name_from_annotations(Some(&a), Path::new("/x/busybox")).as_deref(),
            Some("busybox:1.36")
        );
        a.insert(
            oci_spec::image::ANNOTATION_REF_NAME.to_string(),
            "docker.io/library/alpine:3".to_string(),
        );
        assert_eq!(
            name_from_annotations(Some(&a), Path::new("/x/busybox")).as_deref(),
            Some("docker.io/library/alpine:3")
        );
        assert_eq!(name_from_annotations(None, Path::new("/x/busybox")), None);
    }
}
