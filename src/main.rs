//! argv → logging → dispatch → exit code.

fn main() {
    std::process::exit(ferry::cli::main());
}
