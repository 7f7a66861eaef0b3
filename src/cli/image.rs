//! `ferry image import|ls|inspect|rm`: the image store under `--storage`.

use crate::image::{Image, Store};
use crate::runtime::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tarball) or a root filesystem (directory or
    /// tarball) into the store
    #[command(args_override_self = true)]
    Import {
        /// The layout directory, layout tarball (.tar, .tar.gz, .tar.zst) or rootfs
        path: PathBuf,
        /// Name the image NAME[:TAG] [default: the layout's ref.name annotation, else the
        /// file name]
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store
    #[command(visible_alias = "list", args_override_self = true)]
    Ls {
        /// Output format
        #[arg(short, long, value_enum, default_value_t = ImageFormat::Table)]
        format: ImageFormat,
    },
    /// Print an image's name, digest, config and layers as JSON
    #[command(args_override_self = true)]
    Inspect {
        /// NAME[:TAG] or (a unique prefix of) the manifest digest
        image: String,
    },
    /// Remove images no container uses, and the layers no other image needs
    #[command(visible_alias = "remove", args_override_self = true)]
    Rm {
        /// NAME[:TAG] or (a unique prefix of) the manifest digest
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Table,
    Json,
}

impl ImageArgs {
    pub fn run(self, storage: &Path) -> Result<i32> {
        let store = Store::open(storage)?;
        match self.command {
            ImageCommand::Import { path, name } => {
                let image = store.import(&path, name.as_deref())?;
                println!("{} {}", display_name(&image), image.manifest_digest);
            }
            ImageCommand::Ls { format } => print!("{}", render(&store.list()?, format)),
            ImageCommand::Inspect { image } => {
                let image = store.get(&image)?;
                let text = serde_json::to_string_pretty(&inspect_json(&image))
                    .expect("image JSON serialises");
                println!("{text}");
            }
            ImageCommand::Rm { images } => {
                for name in images {
                    store.remove(&name)?;
                    println!("{name}");
                }
            }
        }
        Ok(0)
    }
}

fn display_name(image: &Image) -> &str {
    if image.name.is_empty() {
        "<none>"
    } else {
        &image.name
    }
}

pub fn inspect_json(image: &Image) -> serde_json::Value {
    json!({
        "name": image.name,
        "digest": image.manifest_digest,
        "created": image.created(),
        "imported": image.imported,
        "size": image.size,
        "config": image.config,
        "layers": image.diff_ids.iter().zip(&image.layers).map(|(d, p)| json!({
            "diff_id": d,
            "path": p,
        })).collect::<Vec<_>>(),
    })
}

/// The output of `image ls`: an aligned table, or a JSON array with the same facts.
pub fn render(images: &[Image], format: ImageFormat) -> String {
    match format {
        ImageFormat::Json => {
            let rows: Vec<_> = images
                .iter()
                .map(|i| {
                    json!({
                        "name": i.name,
                        "digest": i.manifest_digest,
                        "size": i.size,
                        "created": i.created(),
                    })
                })
                .collect();
            let mut out = serde_json::to_string(&rows).expect("image list serialises");
            out.push('\n');
            out
        }
        ImageFormat::Table => {
            let mut rows = vec![["NAME", "DIGEST", "SIZE", "CREATED"].map(String::from)];
            for i in images {
                rows.push([
                    display_name(i).to_string(),
                    i.short_digest().to_string(),
                    human_size(i.size),
                    i.created(),
                ]);
            }
            let mut widths = [0usize; 4];
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let mut out = String::new();
            for row in &rows {
                let line = format!(
                    "{:<w0$}   {:<w1$}   {:>w2$}   {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                );
                out.push_str(line.trim_end());
                out.push('\n');
            }
            out
        }
    }
}

/// Bytes in SI units, as `docker images` shows them: `4.27MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .chars()
            .take(4)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker_images() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_270_000), "4.27MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(1_000_000_000), "1.00GB");
    }

    #[test]
    fn image_subcommands_parse() {
        let cli = crate::cli::parse(&[
            "ferry",
            "--storage",
            "/s",
            "image",
            "import",
            "/x/busybox",
            "--name",
            "bb:1",
        ])
        .unwrap();
        assert_eq!(cli.global.storage, PathBuf::from("/s"));
        match cli.command {
            Some(crate::cli::Command::Image(ImageArgs {
                command: ImageCommand::Import { path, name },
            })) => {
                assert_eq!(path, PathBuf::from("/x/busybox"));
                assert_eq!(name.as_deref(), Some("bb:1"));
            }
            other => panic!("{other:?}"),
        }
        let cli = crate::cli::parse(&["ferry", "image", "ls", "--format", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(crate::cli::Command::Image(ImageArgs {
                command: ImageCommand::Ls {
                    format: ImageFormat::Json
                }
            }))
        ));
        assert!(crate::cli::parse(&["ferry", "image", "rm"]).is_err());
    }
}
