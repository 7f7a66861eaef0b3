//! `ferry ps`: the container's processes, as host pids (JSON) or filtered `ps` output.

use crate::runtime::{Error, Result, Runtime};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct PsArgs {
    /// Output format: `ps` lines, or a JSON array of host pids
    #[arg(short, long, value_enum, default_value_t = PsFormat::Table)]
    pub format: PsFormat,
    /// Container id
    pub id: String,
    /// Arguments for ps [default: -ef]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PS_ARGS"
    )]
    pub ps_args: Vec<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PsFormat {
    Table,
    Json,
}

impl PsArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let pids = runtime.load(&self.id)?.processes()?;
        match self.format {
            PsFormat::Json => {
                println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            }
            PsFormat::Table => {
                let args = if self.ps_args.is_empty() {
                    vec!["-ef".to_string()]
                } else {
                    self.ps_args
                };
                let output = std::process::Command::new("ps")
                    .args(&args)
                    .output()
                    .map_err(|source| Error::Io {
                        context: format!("run ps {}", args.join(" ")),
                        source,
                    })?;
                if !output.status.success() {
                    return Err(Error::Other(format!(
                        "ps {} failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
                print!(
                    "{}",
                    filter_ps_output(&String::from_utf8_lossy(&output.stdout), &pids)?
                );
            }
        }
        Ok(0)
    }
}

/// The header of `ps` output and the lines whose PID column is one of `pids`.
pub fn filter_ps_output(output: &str, pids: &[i32]) -> Result<String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or("");
    let column = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| {
            Error::Other("ps output has no PID column; include pid in the ps format".into())
        })?;
    let mut out = format!("{header}\n");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(column)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_header_and_container_lines() {
        let ps = "UID          PID    PPID  C STIME TTY          TIME CMD\n\
                  root           1       0  0 10:00 ?        00:00:01 /sbin/init\n\
                  root         420       1  0 10:00 ?        00:00:00 sh\n\
                  root         421     420  0 10:00 ?        00:00:00 sleep 1000\n";
        let out = filter_ps_output(ps, &[420, 421]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("UID"));
        assert!(lines[1].ends_with("sh"));
        assert!(lines[2].ends_with("sleep 1000"));
    }

    #[test]
    fn pid_column_is_found_wherever_it_is() {
        let ps = "  PID TTY          TIME CMD\n   7 ?        00:00:00 a\n   8 ?  00:00:00 b\n";
        let out = filter_ps_output(ps, &[8]).unwrap();
        assert_eq!(out.lines().count(), 2);
        assert!(filter_ps_output("TTY CMD\n", &[1]).is_err());
    }
}
