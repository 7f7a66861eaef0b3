//! `ferry features`: the OCI features document.

use crate::runtime::Result;
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct FeaturesArgs {}

impl FeaturesArgs {
    pub fn run(self) -> Result<i32> {
        let features = crate::runtime::features::features();
        println!(
            "{}",
            serde_json::to_string_pretty(&features).unwrap_or_default()
        );
        Ok(0)
    }
}
