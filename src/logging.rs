//! `--log FILE --log-format text|json --debug`: runc-compatible log lines.

pub fn init(log: Option<&std::path::Path>, json: bool, debug: bool) {
    let _ = (log, json, debug);
    todo!("cli helper")
}
