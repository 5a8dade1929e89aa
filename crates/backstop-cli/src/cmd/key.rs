use std::path::PathBuf;

use anyhow::{Result, bail};
use backstop_repo::{KeyId, Password};

use crate::global::{Context, prompt_password, read_password_file};
use crate::output::{local_time, print_json};

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// List the key slots; `*` marks the one the password opened.
    List,
    /// Add a key slot for another password.
    Add(NewPassword),
    /// Remove a key slot (not the one in use, not the last one).
    Remove {
        /// Key id or a unique prefix.
        #[arg(value_name = "KEY")]
        id: String,
    },
    /// Replace the key slot in use with one for a new password.
    Passwd(NewPassword),
}

#[derive(clap::Args)]
pub struct NewPassword {
    /// Read the new password from this file (else you are asked twice).
    #[arg(long, env = "BACKSTOP_NEW_PASSWORD_FILE", value_name = "FILE")]
    new_password_file: Option<PathBuf>,
}

impl NewPassword {
    fn get(&self) -> Result<Password> {
        match &self.new_password_file {
            Some(f) => read_password_file(f),
            None => prompt_password("enter the new password: ", true),
        }
    }
}

pub fn run(ctx: &Context, command: KeyCommand) -> Result<u8> {
    let repo = ctx.open()?;
    match command {
        KeyCommand::List => {
            let keys = repo.keys()?;
            if ctx.args.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|(id, slot)| {
                        serde_json::json!({
                            "id": id, "current": *id == repo.key_id(), "created": slot.created,
                            "hostname": slot.hostname, "username": slot.username,
                        })
                    })
                    .collect();
                print_json(&list);
            } else {
                println!(" {:<8}  {:<19}  {:<16}  User", "ID", "Created", "Host");
                for (id, slot) in &keys {
                    let mark = if *id == repo.key_id() { '*' } else { ' ' };
                    println!(
                        "{mark}{:<8}  {:<19}  {:<16}  {}",
                        id.short(),
                        local_time(&slot.created),
                        slot.hostname,
                        slot.username
                    );
                }
            }
        }
        KeyCommand::Add(new) => {
            let id = repo.add_key(&new.get()?, ctx.kdf())?;
            report(ctx, "added key", &id);
        }
        KeyCommand::Remove { id } => {
            let wanted = id.to_ascii_lowercase();
            let matches: Vec<KeyId> =
                repo.keys()?.into_iter().map(|k| k.0).filter(|k| k.to_hex().starts_with(&wanted)).collect();
            let id = match matches.as_slice() {
                [one] => *one,
                [] => bail!("no key {id:?}; `backstop key list` shows the ids"),
                _ => bail!("key id prefix {id:?} is ambiguous; give more digits"),
            };
            repo.remove_key(&id)?;
            report(ctx, "removed key", &id);
        }
        KeyCommand::Passwd(new) => {
            let id = repo.change_password(&new.get()?, ctx.kdf())?;
            report(ctx, "password changed; new key", &id);
        }
    }
    Ok(0)
}

fn report(ctx: &Context, what: &str, id: &KeyId) {
    if ctx.args.json {
        print_json(&serde_json::json!({ "key_id": id }));
    } else if !ctx.args.quiet {
        println!("{what} {}", id.short());
    }
}
