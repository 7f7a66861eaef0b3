//! `ferry exec`: run a process inside a container, either described by flags on top of the
//! container's own `process` (as runc does), or given whole as an OCI `Process` JSON file
//! (`--process`, the form conmon uses).

use crate::runtime::{Error, ExecOptions, Result, Runtime};
use clap::Args;
use oci_spec::runtime::{Capabilities, Capability, Process};
use std::path::PathBuf;

#[derive(Args, Debug, Default)]
#[command(args_override_self = true)]
pub struct ExecArgs {
    /// An OCI process JSON file describing the whole process; the flags that change the
    /// process are then not allowed
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-terminal (sent over --console-socket)
    #[arg(short, long)]
    pub tty: bool,
    /// Working directory inside the container
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (repeatable); replaces one of the same name
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Run as UID[:GID]
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Additional group ids (repeatable)
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// Add a capability to every capability set (repeatable), e.g. CAP_NET_ADMIN
    #[arg(short, long = "cap", value_name = "CAP")]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process
    #[arg(long)]
    pub no_new_privs: bool,
    /// SELinux label of the process
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// AppArmor profile of the process
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// Return once the process started instead of waiting for it
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid to FILE
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Pass N extra file descriptors (3, 4, …) to the process
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id
    pub id: String,
    /// The command and its arguments (everything after the id)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl ExecArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        // Held while the process joins, so it waits for a checkpoint: without, an exec while
        // one had the container frozen was refused as "paused" (a pause nobody asked for),
        // or, checked just before the freeze, joined a frozen container halfway.
        let (hold, container) = runtime.hold(&self.id, true)?;
        let process = match &self.process {
            Some(path) => {
                self.refuse_process_flags()?;
                let mut p = super::read_json::<Process>(path)?;
                // conmon sends `--tty` beside a process file that already says terminal.
                if self.tty {
                    p.set_terminal(Some(true));
                }
                p
            }
            None => {
                let spec = container.spec()?;
                let base = spec.process().clone().unwrap_or_default();
                self.process_from(base)?
            }
        };
        let opts = ExecOptions {
            process,
            detach: self.detach,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            preserve_fds: self.preserve_fds,
        };
        container.exec(&opts, hold)
    }

    /// With `--process` the file is the whole truth; a flag that would change it is a
    /// mistake worth saying out loud.
    fn refuse_process_flags(&self) -> Result<()> {
        let mut given = Vec::new();
        if !self.command.is_empty() {
            given.push("a command");
        }
        if self.cwd.is_some() {
            given.push("--cwd");
        }
        if !self.env.is_empty() {
            given.push("--env");
        }
        if self.user.is_some() {
            given.push("--user");
        }
        if !self.additional_gids.is_empty() {
            given.push("--additional-gids");
        }
        if !self.cap.is_empty() {
            given.push("--cap");
        }
        if self.no_new_privs {
            given.push("--no-new-privs");
        }
        if self.process_label.is_some() {
            given.push("--process-label");
        }
        if self.apparmor.is_some() {
            given.push("--apparmor");
        }
        if given.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "exec --process takes the whole process from its file; drop {} or drop --process",
                given.join(", ")
            )))
        }
    }

    /// The container's own process with the flags applied on top, as runc's exec does.
    pub fn process_from(&self, mut process: Process) -> Result<Process> {
        if self.command.is_empty() {
            return Err(Error::Other(format!(
                "exec into {:?} needs a command (`ferry exec {} sh`) or --process FILE",
                self.id, self.id
            )));
        }
        process.set_args(Some(self.command.clone()));
        process.set_command_line(None);
        let env = merge_env(process.env().clone().unwrap_or_default(), &self.env);
        process.set_env(Some(env));
        if let Some(cwd) = &self.cwd {
            process.set_cwd(cwd.clone());
        }
        // runc: the terminal is what the flag says, not inherited from the container.
        process.set_terminal(Some(self.tty));
        process.set_console_size(None);
        if let Some(user) = &self.user {
            let (uid, gid) = parse_user(user)?;
            process.user_mut().set_uid(uid);
            if let Some(gid) = gid {
                process.user_mut().set_gid(gid);
            }
        }
        if !self.additional_gids.is_empty() {
            process
                .user_mut()
                .set_additional_gids(Some(self.additional_gids.clone()));
        }
        if !self.cap.is_empty() {
            let added = self
                .cap
                .iter()
                .map(|c| parse_capability(c))
                .collect::<Result<Vec<_>>>()?;
            let mut caps = process.capabilities().clone().unwrap_or_default();
            let with = |set: &Option<Capabilities>| -> Option<Capabilities> {
                let mut set = set.clone().unwrap_or_default();
                set.extend(added.iter().copied());
                Some(set)
            };
            caps.set_bounding(with(caps.bounding()));
            caps.set_effective(with(caps.effective()));
            caps.set_permitted(with(caps.permitted()));
            caps.set_inheritable(with(caps.inheritable()));
            caps.set_ambient(with(caps.ambient()));
            process.set_capabilities(Some(caps));
        }
        if self.no_new_privs {
            process.set_no_new_privileges(Some(true));
        }
        if let Some(label) = &self.process_label {
            process.set_selinux_label(Some(label.clone()));
        }
        if let Some(profile) = &self.apparmor {
            process.set_apparmor_profile(Some(profile.clone()));
        }
        Ok(process)
    }
}

/// `base` with `extra` applied in order: a variable already set is replaced where it stands,
/// a new one is appended, so the last assignment of a name wins.
fn merge_env(base: Vec<String>, extra: &[String]) -> Vec<String> {
    let mut env = base;
    for entry in extra {
        let key = entry.split('=').next().unwrap_or(entry);
        match env
            .iter_mut()
            .find(|e| e.split('=').next().unwrap_or(e) == key)
        {
            Some(slot) => *slot = entry.clone(),
            None => env.push(entry.clone()),
        }
    }
    env
}

/// `UID` or `UID:GID`, both numeric (names would need the container's /etc/passwd).
fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || {
        Error::Other(format!(
            "invalid --user {s:?}: give a numeric UID or UID:GID, e.g. 1000:1000"
        ))
    };
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin`.
fn parse_capability(s: &str) -> Result<Capability> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(name)).map_err(|_| {
        Error::Other(format!(
            "unknown capability {s:?} for --cap; use a name such as CAP_NET_ADMIN"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: impl FnOnce(&mut ExecArgs)) -> ExecArgs {
        let mut a = ExecArgs {
            id: "c1".into(),
            command: vec!["ls".into(), "-l".into()],
            ..Default::default()
        };
        extra(&mut a);
        a
    }

    fn base() -> Process {
        let mut p = Process::default();
        p.set_env(Some(vec![
            "PATH=/bin".into(),
            "TERM=xterm".into(),
            "HOME=/root".into(),
        ]));
        p.set_terminal(Some(true));
        p.set_cwd("/srv".into());
        p
    }

    #[test]
    fn flags_override_the_container_process() {
        let a = args(|a| {
            a.env = vec!["TERM=dumb".into(), "FOO=1".into(), "FOO=2".into()];
            a.cwd = Some("/tmp".into());
            a.user = Some("1000:100".into());
            a.additional_gids = vec![10, 11];
            a.no_new_privs = true;
        });
        let p = a.process_from(base()).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["ls", "-l"]);
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/bin", "TERM=dumb", "HOME=/root", "FOO=2"]
        );
        assert_eq!(p.cwd(), std::path::Path::new("/tmp"));
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 100);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[10, 11]);
        assert_eq!(p.no_new_privileges(), Some(true));
    }

    #[test]
    fn without_flags_the_container_process_stays() {
        let p = args(|a| a.tty = true).process_from(base()).unwrap();
        assert_eq!(p.cwd(), std::path::Path::new("/srv"));
        assert_eq!(p.env().as_ref().unwrap().len(), 3);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.user().uid(), 0);
    }

    #[test]
    fn cap_is_added_to_every_set() {
        let a = args(|a| a.cap = vec!["CAP_NET_ADMIN".into(), "sys_ptrace".into()]);
        let p = a.process_from(base()).unwrap();
        let caps = p.capabilities().as_ref().unwrap();
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.inheritable(),
            caps.ambient(),
        ] {
            let set = set.as_ref().unwrap();
            assert!(set.contains(&Capability::NetAdmin));
            assert!(set.contains(&Capability::SysPtrace));
        }
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Kill)
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(
            args(|a| a.user = Some("bob".into()))
                .process_from(base())
                .is_err()
        );
        assert!(
            args(|a| a.cap = vec!["CAP_FLY".into()])
                .process_from(base())
                .is_err()
        );
        assert!(args(|a| a.command.clear()).process_from(base()).is_err());
        let a = args(|a| a.process = Some("/p.json".into()));
        assert!(a.refuse_process_flags().is_err());
        let a = args(|a| {
            a.process = Some("/p.json".into());
            a.command.clear();
        });
        assert!(a.refuse_process_flags().is_ok());
    }
}
