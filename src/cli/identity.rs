//! `ferry identity` and `ferry trust`: this host's signing key, and the hosts whose archives
//! (and, later, migrations) it accepts.

use crate::identity::{Fingerprint, Identity, TrustStore};
use crate::runtime::{Error, Result};
use clap::{Args, Subcommand};
use std::path::Path;

fn err(e: crate::identity::Error) -> Error {
    Error::Other(e.to_string())
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct IdentityArgs {
    /// Print JSON: fingerprint and public key
    #[arg(long)]
    pub json: bool,
}

impl IdentityArgs {
    pub fn run(self, storage: &Path) -> Result<i32> {
        let id = Identity::load_or_create(storage).map_err(err)?;
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "fingerprint": id.fingerprint().0,
                    "public_key": hex::encode(id.public_key().as_bytes()),
                })
            );
        } else {
            println!("{}", id.fingerprint());
        }
        Ok(0)
    }
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct TrustArgs {
    #[command(subcommand)]
    pub command: TrustCommand,
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Trust archives signed by the host with this fingerprint (`ferry identity` on it)
    Add {
        fingerprint: String,
        /// A name to show for it
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List trusted signers
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a signer (by name, fingerprint or a prefix of 8+ digits)
    #[command(alias = "remove")]
    Rm { signer: String },
}

impl TrustArgs {
    pub fn run(self, storage: &Path) -> Result<i32> {
        let store = TrustStore::open(storage);
        match self.command {
            TrustCommand::Add { fingerprint, name } => {
                let fp = Fingerprint::parse(&fingerprint).map_err(err)?;
                store.add(&fp, &name).map_err(err)?;
                println!(
                    "trusted {fp}{}",
                    if name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({name})")
                    }
                );
            }
            TrustCommand::Ls { json } => {
                let all = store.list().map_err(err)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
                } else {
                    let w = all.iter().map(|s| s.name.len()).max().unwrap_or(0).max(4);
                    println!("{:<w$}  FINGERPRINT{:54}ADDED", "NAME", "");
                    for s in all {
                        println!(
                            "{:<w$}  {}  {}",
                            s.name,
                            s.fingerprint,
                            s.added.format("%Y-%m-%d %H:%M")
                        );
                    }
                }
            }
            TrustCommand::Rm { signer } => {
                let s = store.remove(&signer).map_err(err)?;
                println!("no longer trusted: {}", s.fingerprint);
            }
        }
        Ok(0)
    }
}
