//! `steedos-wasm kv get|set|list|delete APP BUCKET [KEY]`: an operator's
//! look inside an app's buckets, through the same [`Stores`] the app
//! uses. An embedded bucket is a file one process opens at a time: while
//! the app runs, the command says so.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{Bucket, PAGE, Stores};
use crate::manifest::Manifest;

/// What `kv` does.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Print the value of KEY (as text when it is UTF-8, else as hex).
    Get(KeyArgs),
    /// Set KEY to VALUE.
    Set {
        /// The app, bucket and key.
        #[command(flatten)]
        at: KeyArgs,
        /// The value, as text.
        value: String,
        /// Expire after this long ("30s", "1h").
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// List the keys of BUCKET, one a line.
    List(BucketArgs),
    /// Delete KEY.
    Delete(KeyArgs),
}

/// An app and one of its buckets.
#[derive(Debug, clap::Args)]
pub struct BucketArgs {
    /// The app folder (or its steedos.toml).
    pub app: PathBuf,
    /// The bucket.
    pub bucket: String,
}

/// An app, a bucket and a key.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The app and bucket.
    #[command(flatten)]
    pub at: BucketArgs,
    /// The key.
    pub key: String,
}

/// Runs `command`, printing to stdout.
pub async fn run(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Get(args) => {
            let bucket = open(&args.at)?;
            bucket.check_key(&args.key)?;
            match bucket.run(|b| b.get(&args.key)).await? {
                Some(value) => match String::from_utf8(value) {
                    Ok(text) => println!("{text}"),
                    Err(bytes) => println!("{}", hex(bytes.as_bytes())),
                },
                None => bail!("bucket `{}`: no key `{}`", bucket.name(), args.key),
            }
        }
        KvCommand::Set { at, value, ttl } => {
            let bucket = open(&at.at)?;
            bucket.check_key(&at.key)?;
            bucket.check_value(value.as_bytes())?;
            bucket
                .run(|b| b.set(&at.key, value.as_bytes(), ttl))
                .await?;
        }
        KvCommand::List(args) => {
            let bucket = open(&args)?;
            let mut cursor = None;
            loop {
                let (keys, next) = bucket.run(|b| b.list(cursor.as_deref(), PAGE)).await?;
                for key in keys {
                    println!("{key}");
                }
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        KvCommand::Delete(args) => {
            let bucket = open(&args.at)?;
            bucket.check_key(&args.key)?;
            bucket.run(|b| b.delete(&args.key)).await?;
        }
    }
    Ok(())
}

/// The bucket `args` names in its app.
fn open(args: &BucketArgs) -> anyhow::Result<std::sync::Arc<Bucket>> {
    let manifest = Manifest::load(&args.app)
        .with_context(|| format!("cannot read the app at {}", args.app.display()))?;
    let stores = Stores::new(&manifest);
    match stores.bucket(&args.bucket) {
        Some(bucket) => Ok(bucket),
        None => {
            let all = stores.buckets();
            let names: Vec<&str> = all
                .iter()
                .map(|b| b.name())
                .filter(|n| !n.starts_with('$'))
                .collect();
            bail!(
                "the app has no bucket `{}` (its buckets: {}); a bucket is named by a [kv.<name>] table or a grants.kv",
                args.bucket,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
