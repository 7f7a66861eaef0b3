//! `ferry features`: the OCI runtime features document.

/// The features JSON (runtime-spec `features.md`) describing what this build supports.
pub fn features() -> serde_json::Value {
    todo!("cli helper")
}
