//! The `meridian` command.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meridian", version, about = "Meridian teleradiology platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Event types: writer, aggregate, data class, topic stream, schema version.
    Events,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Events => {
            println!(
                "{:<22} {:<8} {:<15} {:<6} {:<8} {}",
                "event", "writer", "aggregate", "class", "stream", "version"
            );
            for info in meridian_events::payload::CATALOGUE {
                let name = info.type_name.rsplit('.').next().unwrap_or(info.type_name);
                println!(
                    "{:<22} {:<8} {:<15} {:<6} {:<8} {}",
                    name,
                    info.writer,
                    info.aggregate_type,
                    info.data_class.as_str(),
                    info.stream,
                    info.schema_version
                );
            }
        }
    }
    Ok(())
}
