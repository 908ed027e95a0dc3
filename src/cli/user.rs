//! `chronicle user create`: an operator creates a user with a given role; the password
//! comes from stdin, never from the command line (where `ps` would show it).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use chronicle_commands::auth::{RegisterRequest, Role};
use clap::Subcommand;
use uuid::Uuid;

use crate::actor::Actor;
use crate::api::auth::UserView;
use crate::app::connect_store_for_command;
use crate::auth::accounts::{create_user, RoleChoice};
use crate::bus::{CommandBus, CommandContext};
use crate::config::Settings;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is the first line of stdin.
    Create {
        #[arg(long)]
        email: String,
        /// `user`, `auditor` or `admin`.
        #[arg(long, default_value = "user")]
        role: Role,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from stdin (the only way; accepted for scripts that say so).
        #[arg(long)]
        password_stdin: bool,
    },
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn run(command: UserCommand, settings: Settings) -> anyhow::Result<()> {
    let UserCommand::Create {
        email,
        role,
        display_name,
        password_stdin: _,
    } = command;
    let password = read_password()?;
    let registration = RegisterRequest {
        email,
        password,
        display_name,
    }
    .validate()
    .map_err(|errors| {
        let described: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("--{}: {}", e.field.replace('_', "-"), e.message))
            .collect();
        anyhow::anyhow!("{}", described.join("; "))
    })?;
    let store = connect_store_for_command(&settings).await?;
    let bus = CommandBus::new(store);
    let context = CommandContext {
        actor: Actor::system().to_string(),
        correlation_id: Uuid::now_v7().to_string(),
        ..CommandContext::default()
    };
    let user = create_user(&bus, registration, RoleChoice::Exactly(role), context).await?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &UserView::from(&user))?;
    writeln!(stdout)?;
    Ok(())
}
