//! A terminal through `--console-socket`: ferry sends the pty master with SCM_RIGHTS, the
//! container's stdio is the slave, and what the test types reaches the shell.

mod common;

use common::*;
use std::io::Write;

#[test]
fn create_with_a_terminal_sends_the_pty_master() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sh"]);
    bundle.terminal(true).with_helper("ttycheck");
    bundle.save();
    let id = ferry.id("tty");
    let sock = ConsoleSocket::new(&ferry.scratch());
    let create = ferry.spawn(&[
        "create",
        "--bundle",
        bundle.path_str(),
        "--console-socket",
        sock.path_str(),
        &id,
    ]);
    let master = sock.receive_master(WAIT);
    create.finish(COMMAND_TIMEOUT).ok();
    ferry.run(&["start", &id]).ok();

    let mut tty = std::fs::File::from(master.try_clone().unwrap());
    // $((…)) so the echo of what we typed does not match by itself.
    tty.write_all(b"echo hi-$((40+2))\n").unwrap();
    read_until(&master, "hi-42", WAIT);
    tty.write_all(b"/bin/ttycheck\n").unwrap();
    // The shell's stdin is the pty slave.
    read_until(&master, "isatty=1 ttyname=/dev/", WAIT);
    tty.write_all(b"exit 4\n").unwrap();
    ferry.wait_status(&id, "stopped");
}

#[test]
fn without_a_terminal_stdin_is_not_a_tty() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["/bin/ttycheck"]);
    bundle.with_helper("ttycheck");
    bundle.save();
    let id = ferry.id("notty");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    assert_eq!(out.stdout.trim(), "isatty=0 ttyname=-");
}

#[test]
fn terminal_without_a_console_socket_is_refused_by_create() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sh"]);
    bundle.terminal(true);
    bundle.save();
    let id = ferry.id("nosock");
    let out = ferry.create(&bundle, &id).fails();
    assert!(out.stderr.contains("console-socket"), "{:?}", out.stderr);
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn exec_with_a_tty_through_the_console_socket() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.with_helper("ttycheck");
    bundle.save();
    let id = ferry.id("exectty");
    ferry.start_container(&bundle, &id);
    let sock = ConsoleSocket::new(&ferry.scratch());
    let exec = ferry.spawn(&[
        "exec",
        "--tty",
        "--console-socket",
        sock.path_str(),
        &id,
        "sh",
        "-c",
        "/bin/ttycheck; read line; echo got-$line",
    ]);
    let master = sock.receive_master(WAIT);
    read_until(&master, "isatty=1 ttyname=/dev/", WAIT);
    let mut tty = std::fs::File::from(master.try_clone().unwrap());
    tty.write_all(b"abc\n").unwrap();
    read_until(&master, "got-abc", WAIT);
    let out = exec.finish(COMMAND_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
}
