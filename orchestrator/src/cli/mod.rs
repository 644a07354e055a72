//! The `bulkhead` command line.

mod image;
mod kernel;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (the message says why and what to do)
  2  bad usage";

#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about = "Run OCI container images, each in its own KVM microVM", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and locate the guest kernel every microVM boots.
    #[command(subcommand, after_help = EXIT_CODES)]
    Kernel(kernel::KernelCommand),
    /// Import, list, inspect and remove images; build their root disks.
    /// The store is $BULKHEAD_DATA, else /var/lib/bulkhead as root, else
    /// ~/.local/share/bulkhead.
    #[command(subcommand, after_help = EXIT_CODES)]
    Image(image::ImageCommand),
}

pub fn main() -> ExitCode {
    // In the child `image disk|gc` starts in a user namespace: wait for its id maps.
    if let Err(e) = bulkhead_images::userns::child_wait() {
        eprintln!("bulkhead: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if let Command::Image(cmd) = &cli.command {
        if let Some(done) = image::rerun_rootless(cmd) {
            return done.unwrap_or_else(|e| {
                eprintln!("bulkhead: {e:#}");
                ExitCode::FAILURE
            });
        }
    }
    let result = match cli.command {
        Command::Kernel(cmd) => kernel::run(cmd),
        Command::Image(cmd) => image::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
