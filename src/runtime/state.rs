//! Container status and the OCI state document that `ferry state` prints.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// The lifecycle states. The rules of what may happen in each live here, so every verb asks
/// the status rather than repeating the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn can_start(self) -> bool {
        self == Status::Created
    }
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Stopped | Status::Creating)
    }
    pub fn can_pause(self) -> bool {
        matches!(self, Status::Running | Status::Created)
    }
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }
    pub fn can_exec(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state JSON of runtime-spec, with runc's extra fields (`rootfs`, `created`, `owner`),
/// in runc's field order so clients that decode either find what they expect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    pub owner: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_rules() {
        assert!(Status::Created.can_start());
        assert!(!Status::Running.can_start());
        assert!(!Status::Running.can_delete());
        assert!(Status::Stopped.can_delete());
        assert!(Status::Paused.can_resume());
        assert!(!Status::Stopped.can_kill());
    }

    #[test]
    fn state_json_shape() {
        let s = OciState {
            oci_version: "1.2.0".into(),
            id: "c1".into(),
            pid: 42,
            status: Status::Running,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
            annotations: HashMap::new(),
            owner: String::new(),
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ociVersion"], "1.2.0");
        assert_eq!(v["status"], "running");
        assert_eq!(v["created"], "2026-01-02T03:04:05.123456789Z");
        assert!(v.get("annotations").is_none());
    }
}
