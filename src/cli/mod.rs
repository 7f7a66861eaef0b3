//! argv → clap → runtime calls, with runc's command line so podman (through conmon) and
//! containerd's shim can call ferry in its place. One file per subcommand; each builds the
//! runtime's option structs and calls it, nothing more.

mod bench;
mod checkpoint;
mod create;
mod delete;
mod diff;
mod events;
mod exec;
mod features;
mod identity;
mod image;
mod inspect;
mod kill;
mod list;
mod pause;
mod ps;
mod restore;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod update;

pub use checkpoint::{CheckpointArgs, Compression, CriuFlags, ManageCgroupsMode};
pub use create::{CreateArgs, CreateFlags};
pub use delete::DeleteArgs;
pub use events::EventsArgs;
pub use exec::ExecArgs;
pub use features::FeaturesArgs;
pub use image::{ImageArgs, ImageCommand, ImageFormat};
pub use kill::KillArgs;
pub use list::{ListArgs, ListFormat};
pub use pause::PauseArgs;
pub use ps::{PsArgs, PsFormat};
pub use restore::RestoreArgs;
pub use resume::ResumeArgs;
pub use run::RunArgs;
pub use spec::SpecArgs;
pub use start::StartArgs;
pub use state::StateArgs;
pub use update::UpdateArgs;

use crate::runtime::{Error, Result, Runtime};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    about = "An OCI container runtime that checkpoints and migrates containers (runc-compatible command line)",
    args_override_self = true,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags accepted before the subcommand (as runc requires) or after it.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Directory for container state [default: /run/ferry, or $XDG_RUNTIME_DIR/ferry when
    /// not run as root]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Append log lines to FILE instead of stderr
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Format of log lines: logrus-style text or one JSON object per line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log debug messages
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        hide_default_value = true,
        hide_possible_values = true,
        value_name = "BOOL"
    )]
    pub debug: bool,

    /// Accepted for compatibility with runc; ferry always drives cgroupfs directly
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        hide_default_value = true,
        hide_possible_values = true,
        value_name = "BOOL"
    )]
    pub systemd_cgroup: bool,

    /// Accepted for compatibility with runc (ferry decides from the spec's user namespace);
    /// `ferry spec --rootless` writes a spec for an unprivileged user
    // One flag serves both: clap cannot hold a global `--rootless VALUE` and `spec --rootless`
    // side by side, so a bare `--rootless` means `true`.
    #[arg(
        long,
        global = true,
        value_enum,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "true|false|auto"
    )]
    pub rootless: Option<Rootless>,

    /// Path of the criu binary used by checkpoint and restore [default: criu on PATH]
    #[arg(long, global = true, value_name = "PATH")]
    pub criu: Option<PathBuf>,

    /// Directory of the image store (images, their layers, containers' upper dirs)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FERRY_STORAGE",
        default_value = "/var/lib/ferry"
    )]
    pub storage: PathBuf,

    /// Print the ferry, OCI runtime-spec and CRIU versions
    #[arg(short = 'v', long)]
    pub version: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rootless {
    True,
    False,
    Auto,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a default config.json into the bundle
    Spec(SpecArgs),
    /// Create a container from a bundle; its process waits for `start`
    Create(CreateArgs),
    /// Start the process of a created container
    Start(StartArgs),
    /// Create and start a container
    Run(RunArgs),
    /// Print the state of a container as JSON
    State(StateArgs),
    /// Send a signal to the container's init (or every process with --all)
    Kill(KillArgs),
    /// Delete a stopped container (or any container with --force)
    Delete(DeleteArgs),
    /// List containers
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Run a new process inside a container
    Exec(ExecArgs),
    /// Freeze every process of a container
    Pause(PauseArgs),
    /// Thaw a paused container
    Resume(ResumeArgs),
    /// Show the processes running inside a container
    Ps(PsArgs),
    /// Print a container's cgroup stats (and OOM kills) as JSON lines, once or every interval
    Events(EventsArgs),
    /// Change the resource limits of a container
    Update(UpdateArgs),
    /// Print the OCI features document of this runtime
    Features(FeaturesArgs),
    /// Checkpoint a running container with CRIU
    Checkpoint(CheckpointArgs),
    /// Restore a container from a CRIU checkpoint
    Restore(RestoreArgs),
    /// Manage the image store: import, ls, inspect, rm
    Image(ImageArgs),
    /// Print this host's identity (the fingerprint of the key that signs its archives)
    Identity(identity::IdentityArgs),
    /// Benchmarks: `bench checkpoint --size 16M,256M,1G`
    Bench(bench::BenchArgs),
    /// The container's own changes to its image: A(dded), C(hanged), D(eleted) paths
    Diff(diff::DiffArgs),
    /// Manage the hosts whose archives this host restores
    Trust(identity::TrustArgs),
    /// Show what a checkpoint archive holds, verified but not restored
    Inspect(inspect::InspectArgs),
    /// (internal) Thaws a container whose `checkpoint -e` is killed while it is frozen
    #[command(name = "guard-frozen", hide = true)]
    GuardFrozen(checkpoint::GuardFrozenArgs),
}

/// Runs ferry with the process's argv and returns its exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match parse(&args) {
        Ok(cli) => run(cli),
        Err(err) => {
            let text = render_clap_error(&err);
            if err.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            err.exit_code()
        }
    }
}

/// Parses argv (with the program name first) after runc-style normalisation.
pub fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
    let args = normalise(args);
    let mut matches = Cli::command().try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// clap's text for a usage error, with runc's "flag needs an argument" added where a value
/// is missing: podman's pod-restore probe greps for that phrase.
pub fn render_clap_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    if err.kind() == ErrorKind::InvalidValue && text.contains("a value is required") {
        let flag = match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg.split_whitespace().next().unwrap_or(""),
            _ => "",
        };
        return format!("flag needs an argument: {flag}\n{text}");
    }
    text
}

/// Rewrites argv the way urfave/cli (runc's parser) reads it, before clap sees it:
/// a single-dash token naming a long flag (`-no-subreaper`, `-pid-file=x`) becomes `--…`.
/// A command to exec, ps arguments and anything after `--` pass through untouched.
pub fn normalise(args: &[&str]) -> Vec<String> {
    let mut root = Cli::command();
    root.build();
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    if let Some(program) = iter.next() {
        out.push(program.to_string());
    }
    let mut sub: Option<&clap::Command> = None;
    let mut positionals = 0usize;
    let mut value_next = false;
    let mut verbatim = false;
    for &tok in iter {
        if verbatim || value_next {
            value_next = false;
            out.push(tok.to_string());
            continue;
        }
        if tok == "--" {
            verbatim = true;
            out.push(tok.to_string());
            continue;
        }
        let cmd = sub.unwrap_or(&root);
        if let Some(rest) = tok.strip_prefix("--") {
            value_next = flag_wants_next_token(find_long(cmd, rest), rest);
            out.push(tok.to_string());
            continue;
        }
        if let Some(rest) = tok.strip_prefix('-').filter(|r| !r.is_empty()) {
            let name = rest.split('=').next().unwrap_or(rest);
            if name.len() > 1
                && let Some(arg) = find_long(cmd, rest)
            {
                value_next = flag_wants_next_token(Some(arg), rest);
                out.push(format!("-{tok}"));
                continue;
            }
            // A short flag (or cluster); a lone short taking a value eats the next token.
            let mut chars = rest.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                value_next = cmd
                    .get_arguments()
                    .find(|a| a.get_short() == Some(c))
                    .is_some_and(|a| a.get_action().takes_values());
            }
            out.push(tok.to_string());
            continue;
        }
        // A positional: the subcommand's name first, then its own positionals.
        match sub {
            None => {
                sub = root
                    .get_subcommands()
                    .find(|s| s.get_name() == tok || s.get_all_aliases().any(|a| a == tok));
            }
            Some(s) => {
                let mut pos: Vec<&clap::Arg> = s.get_positionals().collect();
                pos.sort_by_key(|a| a.get_index());
                if pos
                    .get(positionals)
                    .is_some_and(|a| a.is_trailing_var_arg_set())
                {
                    verbatim = true;
                }
                positionals += 1;
            }
        }
        out.push(tok.to_string());
    }
    out
}

/// The long flag named by `rest` (`name` or `name=value`, `--` already stripped) in `cmd`.
fn find_long<'a>(cmd: &'a clap::Command, rest: &str) -> Option<&'a clap::Arg> {
    let name = rest.split('=').next().unwrap_or(rest);
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
    })
}

fn flag_wants_next_token(arg: Option<&clap::Arg>, rest: &str) -> bool {
    arg.is_some_and(|a| {
        a.get_action().takes_values() && !a.is_require_equals_set() && !rest.contains('=')
    })
}

/// Runs a parsed command line and returns the exit code.
pub fn run(cli: Cli) -> i32 {
    let global = cli.global;
    if global.version {
        print_version(global.criu.as_deref());
        return 0;
    }
    let Some(command) = cli.command else {
        eprint!("{}", Cli::command().render_help());
        return 2;
    };
    // containerd reads `state` with stdout and stderr combined: without a log file there
    // is nowhere safe to log to, so nothing is logged at all.
    let silent = matches!(command, Command::State(_)) && global.log.is_none();
    if !silent {
        let json = global.log_format == LogFormat::Json;
        if let Err(err) = crate::logging::init(global.log.as_deref(), json, global.debug) {
            let path = global.log.as_deref().unwrap_or(std::path::Path::new(""));
            eprintln!("ferry: cannot open log file {}: {err}", path.display());
            return 1;
        }
    }
    if global.systemd_cgroup {
        tracing::debug!("--systemd-cgroup accepted for compatibility; using cgroupfs");
    }
    let runtime = Runtime {
        root: global.root.clone().unwrap_or_else(default_root),
        systemd_cgroup: global.systemd_cgroup,
        storage: global.storage.clone(),
    };
    let rootless = global.rootless == Some(Rootless::True);
    match dispatch(command, &runtime, rootless, &global.storage) {
        Ok(code) => code,
        Err(err) => {
            report_error(&err, global.log.is_some());
            1
        }
    }
}

fn dispatch(
    command: Command,
    runtime: &Runtime,
    rootless: bool,
    storage: &std::path::Path,
) -> Result<i32> {
    match command {
        Command::Spec(a) => a.run(rootless),
        Command::Create(a) => a.run(runtime),
        Command::Start(a) => a.run(runtime),
        Command::Run(a) => a.run(runtime),
        Command::State(a) => a.run(runtime),
        Command::Kill(a) => a.run(runtime),
        Command::Delete(a) => a.run(runtime),
        Command::List(a) => a.run(runtime),
        Command::Exec(a) => a.run(runtime),
        Command::Pause(a) => a.run(runtime),
        Command::Resume(a) => a.run(runtime),
        Command::Ps(a) => a.run(runtime),
        Command::Events(a) => a.run(runtime),
        Command::Update(a) => a.run(runtime),
        Command::Features(a) => a.run(),
        Command::Checkpoint(a) => a.run(runtime),
        Command::Restore(a) => a.run(runtime),
        Command::Image(a) => a.run(storage),
        Command::Identity(a) => a.run(storage),
        Command::Bench(a) => a.run(),
        Command::Diff(a) => a.run(runtime),
        Command::Trust(a) => a.run(storage),
        Command::Inspect(a) => a.run(storage),
        Command::GuardFrozen(a) => crate::checkpoint::guard::watch(runtime, &a.id, &a.archive),
    }
}

/// One line on stderr, and the same as the last line of `--log` (podman reads that line
/// as JSON to explain a failure).
fn report_error(err: &Error, to_log_file: bool) {
    let full = err.to_string();
    if to_log_file {
        // One log line (podman reads the oci-log as one JSON object per line).
        tracing::error!("{}", one_line(&full));
    }
    // On stderr the first line is the whole story for a person; what follows (CRIU's log
    // excerpt, a cleanup that failed too) is indented under it rather than run together.
    let mut lines = full
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty());
    eprintln!("ferry: {}", lines.next().unwrap_or(""));
    for l in lines {
        eprintln!("  {}", l.trim_start());
    }
}

fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/run/ferry`, or `$XDG_RUNTIME_DIR/ferry` for an unprivileged caller: podman passes no
/// `--root`, so every invocation must land on the same directory by itself.
pub fn default_root() -> PathBuf {
    if !nix::unistd::geteuid().is_root()
        && let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())
    {
        return PathBuf::from(dir).join("ferry");
    }
    PathBuf::from("/run/ferry")
}

fn print_version(criu: Option<&std::path::Path>) {
    println!("ferry version {}", env!("CARGO_PKG_VERSION"));
    println!("spec: {}", oci_spec::runtime::VERSION);
    println!(
        "criu: {}",
        criu_version(criu).unwrap_or_else(|| "not found".into())
    );
}

/// The `Version:` line of `criu --version`.
fn criu_version(criu: Option<&std::path::Path>) -> Option<String> {
    let binary = criu.unwrap_or(std::path::Path::new("criu"));
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
}

/// Reads a JSON file given on the command line, naming it in the error.
fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("read {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// The bundle directory: `--bundle`, or the current directory as runc does.
pub(crate) fn bundle_or_cwd(bundle: Option<PathBuf>) -> Result<PathBuf> {
    match bundle {
        Some(b) => Ok(b),
        None => std::env::current_dir().map_err(|source| Error::Io {
            context: "find the current directory (the default bundle)".into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalise(args)
    }

    #[test]
    fn every_command_lets_flags_repeat() {
        let root = Cli::command();
        assert!(root.is_args_override_self());
        for sub in root.get_subcommands() {
            assert!(sub.is_args_override_self(), "{}", sub.get_name());
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn single_dash_long_flags_get_two_dashes() {
        assert_eq!(
            norm(&[
                "ferry",
                "restore",
                "-d",
                "-no-subreaper",
                "--bundle",
                "/b",
                "c1"
            ]),
            [
                "ferry",
                "restore",
                "-d",
                "--no-subreaper",
                "--bundle",
                "/b",
                "c1"
            ]
        );
        assert_eq!(
            norm(&[
                "ferry",
                "create",
                "-pid-file=/p",
                "-no-pivot",
                "-b",
                "/b",
                "c1"
            ]),
            [
                "ferry",
                "create",
                "--pid-file=/p",
                "--no-pivot",
                "-b",
                "/b",
                "c1"
            ]
        );
        // Global flags, before the subcommand.
        assert_eq!(
            norm(&["ferry", "-root", "/r", "-debug", "state", "c1"]),
            ["ferry", "--root", "/r", "--debug", "state", "c1"]
        );
    }

    #[test]
    fn values_and_commands_are_left_alone() {
        // A flag's value that looks like a flag.
        assert_eq!(
            norm(&["ferry", "create", "--pid-file", "-no-pivot", "c1"]),
            ["ferry", "create", "--pid-file", "-no-pivot", "c1"]
        );
        // The command exec runs, and ps's arguments.
        assert_eq!(
            norm(&["ferry", "exec", "-t", "c1", "find", "-name", "-no-pivot"]),
            ["ferry", "exec", "-t", "c1", "find", "-name", "-no-pivot"]
        );
        assert_eq!(
            norm(&["ferry", "exec", "--cwd", "/", "c1", "sh", "-detach"]),
            ["ferry", "exec", "--cwd", "/", "c1", "sh", "-detach"]
        );
        assert_eq!(
            norm(&["ferry", "ps", "c1", "-ef"]),
            ["ferry", "ps", "c1", "-ef"]
        );
        // After `--`.
        assert_eq!(
            norm(&["ferry", "kill", "--", "-no-pivot"]),
            ["ferry", "kill", "--", "-no-pivot"]
        );
        // Short clusters and unknown names.
        assert_eq!(
            norm(&["ferry", "exec", "-dt", "-nope", "c1", "sh"]),
            ["ferry", "exec", "-dt", "-nope", "c1", "sh"]
        );
    }

    #[test]
    fn one_line_joins_cleanup_errors() {
        assert_eq!(
            one_line("a failed\n  and then, while cleaning up: b failed"),
            "a failed and then, while cleaning up: b failed"
        );
    }

    #[test]
    fn default_root_is_deterministic() {
        let root = default_root();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(root, PathBuf::from("/run/ferry"));
        } else {
            assert!(root.ends_with("ferry"));
        }
    }
}
