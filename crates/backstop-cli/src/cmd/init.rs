use anyhow::Result;
use backstop_repo::{InitOptions, Repository};

use crate::global::Context;
use crate::output::print_json;

#[derive(clap::Args)]
#[command(long_about = "Create a new, empty repository at the location given by --repo or \
BACKSTOP_REPOSITORY. The location must be empty (a directory that does not exist yet, an empty \
directory, or an empty S3 prefix). The password opens the repository's first key slot; add more \
with `backstop key add`. Losing every password loses the data.")]
pub struct Args {
    /// zstd level for new data: 1 (fastest) to 19 (smallest); negative levels trade size for speed.
    #[arg(long, default_value_t = backstop_repo::config::DEFAULT_COMPRESSION_LEVEL, value_name = "LEVEL", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-7..=19))]
    compression: i32,

    /// Target size of data packs in KiB (tests use small packs to get many).
    #[arg(long, hide = true, value_name = "KIB", value_parser = clap::value_parser!(u32).range(1024..=1048576))]
    pack_size_kib: Option<u32>,
}

pub fn run(ctx: &Context, args: Args) -> Result<u8> {
    let backend = ctx.backend()?;
    let password = ctx.password(true)?;
    let mut options = InitOptions { kdf: ctx.kdf(), ..InitOptions::default() };
    options.config.compression_level = args.compression;
    if let Some(kib) = args.pack_size_kib {
        options.config.pack_size = kib * 1024;
    }
    let repo = Repository::init(backend, &password, options)?;
    if ctx.args.json {
        print_json(&serde_json::json!({ "id": repo.config().id, "location": repo.location() }));
    } else if !ctx.args.quiet {
        println!("created repository {} at {}", &repo.config().id[..8], repo.location());
        println!("keep the password safe: without it the data cannot be read");
    }
    Ok(0)
}
