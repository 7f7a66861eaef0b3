//! The seccomp profile from config.json: ERRNO with the configured errno, KILL, and exec'd
//! processes filtered like the init.

mod common;

use common::*;
use serde_json::{Value, json};

fn profile(action: &str, errno: Option<u32>, names: &[&str]) -> Value {
    let mut rule = json!({ "names": names, "action": action });
    if let Some(e) = errno {
        rule["errnoRet"] = json!(e);
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [rule]
    })
}

#[test]
fn mkdir_is_refused_with_eperm_and_the_rest_works() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(
        &ferry,
        &[
            "sh",
            "-c",
            "mkdir /tmp/x; echo mkdir=$?; touch /tmp/y && echo touch=ok; ls / >/dev/null && echo ls=ok",
        ],
    );
    bundle.seccomp(profile("SCMP_ACT_ERRNO", Some(1), &["mkdir", "mkdirat"]));
    bundle.save();
    let id = ferry.id("sec");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    assert!(out.stdout.contains("mkdir=1"), "{out:?}");
    assert!(out.stdout.contains("touch=ok"), "{out:?}");
    assert!(out.stdout.contains("ls=ok"), "{out:?}");
    assert!(!bundle.host_path("/tmp/x").exists());
    assert!(bundle.host_path("/tmp/y").exists());
}

#[test]
fn errno_ret_is_the_errno_returned() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["mkdir", "/tmp/x"]);
    bundle.seccomp(profile("SCMP_ACT_ERRNO", Some(13), &["mkdir", "mkdirat"]));
    bundle.save();
    let id = ferry.id("eacces");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
}

#[test]
fn kill_action_kills_the_process_with_sigsys() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["mkdir", "/tmp/x"]);
    bundle.seccomp(profile(
        "SCMP_ACT_KILL_PROCESS",
        None,
        &["mkdir", "mkdirat"],
    ));
    bundle.save();
    let id = ferry.id("sigsys");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]);
    assert_eq!(out.code, Some(128 + 31), "killed by SIGSYS: {out:?}");
    assert!(!bundle.host_path("/tmp/x").exists());
}

#[test]
fn exec_is_filtered_like_the_init() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.seccomp(profile("SCMP_ACT_ERRNO", Some(1), &["mkdir", "mkdirat"]));
    bundle.save();
    let id = ferry.id("secexec");
    ferry.start_container(&bundle, &id);
    let out = ferry.run(&["exec", &id, "mkdir", "/tmp/z"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    ferry.run(&["exec", &id, "touch", "/tmp/ok"]).ok();
}

#[test]
fn argument_conditions_are_honoured() {
    // busybox chmod calls chmod(path, mode): refuse only mode 0700 (448).
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(
        &ferry,
        &[
            "sh",
            "-c",
            "touch /tmp/f; chmod 700 /tmp/f; echo a=$?; chmod 755 /tmp/f; echo b=$?",
        ],
    );
    let cond = |index: u32| json!([{ "index": index, "value": 448, "op": "SCMP_CMP_EQ" }]);
    bundle.seccomp(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            { "names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": cond(1) },
            { "names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": cond(2) }
        ]
    }));
    bundle.save();
    let id = ferry.id("secarg");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    assert!(out.stdout.contains("a=1"), "{out:?}");
    assert!(out.stdout.contains("b=0"), "{out:?}");
}
