//! OCI hooks: each runs with the container's state JSON on stdin, in spec order, and a
//! failure names the hook.

use crate::runtime::OciState;
use crate::runtime::error::{Error, Result};
use oci_spec::runtime::Hook;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn run(kind: &'static str, hooks: &[Hook], state: &OciState) -> Result<()> {
    let input = serde_json::to_vec(state).map_err(|e| Error::Other(e.to_string()))?;
    for (index, hook) in hooks.iter().enumerate() {
        let fail = |msg: String| Error::Hook {
            kind,
            index,
            path: hook.path().display().to_string(),
            msg,
        };
        let args = hook.args().clone().unwrap_or_default();
        let mut cmd = Command::new(hook.path());
        if let Some((argv0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
            cmd.args(rest);
        }
        cmd.env_clear();
        for kv in hook.env().as_deref().unwrap_or_default() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run it: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that ignores its stdin may close it early: that is not an error.
            let _ = stdin.write_all(&input);
        }
        let deadline = hook
            .timeout()
            .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| fail(e.to_string()))? {
                break s;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s",
                    hook.timeout().unwrap_or(0)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(fail(format!("{status}: {}", err.trim())));
        }
    }
    Ok(())
}

/// The hooks of one kind from the spec, in order.
pub fn of(spec: &oci_spec::runtime::Spec, kind: &str) -> Vec<Hook> {
    let Some(h) = spec.hooks().as_ref() else {
        return vec![];
    };
    #[allow(deprecated)]
    let list = match kind {
        "prestart" => h.prestart(),
        "createRuntime" => h.create_runtime(),
        "createContainer" => h.create_container(),
        "startContainer" => h.start_container(),
        "poststart" => h.poststart(),
        "poststop" => h.poststop(),
        _ => &None,
    };
    list.clone().unwrap_or_default()
}
