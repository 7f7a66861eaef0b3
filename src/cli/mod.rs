//! argv → clap → runtime calls.

pub fn main() -> i32 {
    todo!("cli helper")
}
