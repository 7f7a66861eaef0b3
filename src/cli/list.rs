//! `ferry list`: every container under the root, as an aligned table or JSON.

use crate::runtime::{OciState, Result, Runtime, Status};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ListArgs {
    /// Print only the container ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

impl ListArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let mut states = Vec::new();
        let mut frozen = vec![];
        for container in runtime.list()? {
            match container.state() {
                Ok(state) => {
                    if state.status == Status::Paused
                        && let Some(pid) = container.held_by_a_killed_checkpoint()
                    {
                        frozen.push((state.id.clone(), pid));
                    }
                    states.push(state)
                }
                Err(err) => tracing::warn!("skipping container {:?}: {err}", container.id),
            }
        }
        print!("{}", render(&states, self.quiet, self.format));
        for (id, pid) in frozen {
            tracing::warn!(
                "container {id:?} is paused, and the `ferry checkpoint` that last held it (pid \
                 {pid}) was killed before it let go: if the checkpoint froze it, `ferry resume \
                 {id}` thaws it; if its archive is whole (`ferry inspect` it) and is to be \
                 restored instead, `ferry delete --force {id}`"
            );
        }
        // Not containers, so not in the output that tools parse; said beside it.
        for (id, pid) in runtime.remains() {
            tracing::warn!("{}", crate::runtime::unmade::remains_note(&id, pid));
        }
        Ok(0)
    }
}

/// The output of `list`. JSON is always an array (`[]` when empty; runc prints `null`, and
/// go-runc decodes both).
pub fn render(states: &[OciState], quiet: bool, format: ListFormat) -> String {
    if quiet {
        return states.iter().map(|s| format!("{}\n", s.id)).collect();
    }
    match format {
        ListFormat::Json => {
            let mut json = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
            json.push('\n');
            json
        }
        ListFormat::Table => {
            let mut rows =
                vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
            for s in states {
                rows.push([
                    s.id.clone(),
                    s.pid.to_string(),
                    s.status.to_string(),
                    s.bundle.display().to_string(),
                    s.created
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    s.owner.clone(),
                ]);
            }
            align(&rows)
        }
    }
}

/// Columns padded like runc's tabwriter (minimum width 12, 3 spaces between columns).
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count() + 3).max(12);
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Status;
    use chrono::{DateTime, Utc};

    fn state(id: &str, pid: i32) -> OciState {
        OciState {
            oci_version: "1.1.0".into(),
            id: id.into(),
            pid,
            status: Status::Running,
            bundle: format!("/bundles/{id}").into(),
            rootfs: format!("/bundles/{id}/rootfs").into(),
            created: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5Z")
                .unwrap()
                .with_timezone(&Utc),
            annotations: Default::default(),
            owner: "root".into(),
        }
    }

    #[test]
    fn table_is_aligned() {
        let out = render(
            &[state("c1", 42), state("a-much-longer-id", 7)],
            false,
            ListFormat::Table,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID "));
        let col = lines[0].find("PID").unwrap();
        assert_eq!(lines[1].find("42"), Some(col));
        assert_eq!(lines[2].find('7'), Some(col));
        assert!(lines[1].contains("2026-01-02T03:04:05.500Z"));
        assert!(lines[1].ends_with("root"));
    }

    #[test]
    fn json_is_an_array_go_runc_can_decode() {
        assert_eq!(render(&[], false, ListFormat::Json), "[]\n");
        let out = render(&[state("c1", 42)], false, ListFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["id"], "c1");
        assert_eq!(v[0]["pid"], 42);
        assert_eq!(v[0]["status"], "running");
        assert_eq!(v[0]["bundle"], "/bundles/c1");
    }

    #[test]
    fn quiet_prints_ids() {
        assert_eq!(
            render(&[state("c1", 1), state("c2", 2)], true, ListFormat::Table),
            "c1\nc2\n"
        );
    }
}
