//! The `bulkhead` command line.

mod cluster;
mod copy;
mod image;
pub(crate) mod kernel;
mod network;
pub(crate) mod run;
mod secrets;
mod volume;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (the message says why and what to do)
  2  bad usage
`run` and `exec` exit with the workload's status instead, and 125/126/127
when bulkhead failed / the command is not executable / not found.";

#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about = "Run OCI container images, each in its own KVM microVM", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an image: in its own microVM (default) or as a container on this
    /// host's kernel (--runtime container). Attached unless -d.
    Run(Box<run::RunArgs>),
    /// List workloads (running ones; -a for all).
    Ps(workloads::PsArgs),
    /// Print a workload's output (stdout and stderr as they came).
    Logs(workloads::LogsArgs),
    /// Run another command in a running workload.
    Exec(workloads::ExecArgs),
    /// Send the image's stop signal (default SIGTERM), then SIGKILL after -t seconds.
    Stop(workloads::StopArgs),
    /// Send a signal to a workload's main process.
    Kill(workloads::KillArgs),
    /// Remove workloads that ended (-f: also running or orphaned ones).
    Rm(workloads::RmArgs),
    /// A workload's details as JSON: image digest, runtime, VM size, pids,
    /// socket paths, exit status, times.
    Inspect(workloads::InspectArgs),
    /// Copy files and directories between the host and a workload
    /// (`NAME:PATH`), either way, as docker cp does.
    Cp(copy::CpArgs),
    /// Networks: bridges, subnets and the firewall rules between workloads.
    #[command(subcommand, after_help = EXIT_CODES)]
    Network(network::NetworkCommand),
    /// Named volumes: data that outlives workloads (`run -v NAME:/path`).
    #[command(subcommand, after_help = EXIT_CODES)]
    Volume(volume::VolumeCommand),
    /// Host-wide maintenance.
    #[command(subcommand, after_help = EXIT_CODES)]
    System(network::SystemCommand),
    /// Build and locate the guest kernel every microVM boots.
    #[command(subcommand, after_help = EXIT_CODES)]
    Kernel(kernel::KernelCommand),
    /// Import, list, inspect and remove images; build their root disks.
    /// The store is $BULKHEAD_DATA, else /var/lib/bulkhead as root, else
    /// ~/.local/share/bulkhead.
    #[command(subcommand, after_help = EXIT_CODES)]
    Image(image::ImageCommand),
    /// Measure: microVM vs container start phases (boot), many idle
    /// workloads (density), the VMM alone (overhead).
    #[command(subcommand, after_help = EXIT_CODES)]
    Bench(crate::bench::BenchCommand),
    /// The control plane: its HTTP API over the cluster store (one host:
    /// file:PATH). Prints where the admin token is on first start.
    Server(cluster::ServerArgs),
    /// Deploy a service from a file (YAML or JSON) through the server.
    Deploy(cluster::DeployArgs),
    /// A tenant's services on the server: ls, inspect, scale, rm.
    #[command(subcommand, after_help = EXIT_CODES)]
    Service(cluster::ServiceCommand),
    /// A tenant's instances on the server: ls, logs, exec.
    #[command(subcommand, after_help = EXIT_CODES)]
    Instance(cluster::InstanceCommand),
    /// The node daemon (`BULKHEAD_JOIN_TOKEN=T bulkhead node --server URL`), or the
    /// server's nodes (admin): ls, cordon, uncordon, drain, token create.
    #[command(after_help = EXIT_CODES)]
    Node(cluster::NodeArgs),
    /// Tenants on the server (admin): create.
    #[command(subcommand, after_help = EXIT_CODES)]
    Tenant(cluster::TenantCommand),
    /// Every token the server knows (admin): ls, rm.
    #[command(subcommand, after_help = EXIT_CODES)]
    Token(cluster::TokensCommand),
    /// TLS for the server's API: a self-signed pair to try it.
    #[command(subcommand, after_help = EXIT_CODES)]
    Tls(cluster::TlsCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// The per-workload supervisor (started by `run`; not for people).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        notify_fd: Option<i32>,
        id: String,
    },
    /// A fenced container's watcher (started by its supervisor; not for people).
    #[command(name = "__fence-watch", hide = true)]
    FenceWatch {
        #[arg(long)]
        id: String,
        #[arg(long)]
        deadline_file: PathBuf,
        #[arg(long)]
        kill_after_ms: u64,
    },
    /// `bulkhead cp`'s end inside a container (started by its supervisor or
    /// by `cp`; not for people).
    #[command(name = "__copy", hide = true)]
    Copy {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        pid: Option<i32>,
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        id_base: u32,
    },
    /// A network's resolver (started for a network with workloads; not for people).
    #[command(name = "__dns", hide = true)]
    Dns {
        #[arg(long)]
        bridge: String,
    },
    /// A tenant's userspace WireGuard tunnel (started by the node daemon
    /// where the kernel has none; not for people).
    #[command(name = "__wg", hide = true)]
    Wg {
        #[arg(long)]
        iface: String,
        /// Its key in the node's data dir: it ends when that is gone.
        #[arg(long)]
        key: std::path::PathBuf,
    },
}

pub fn main() -> ExitCode {
    // In the child `image disk|gc` starts in a user namespace: wait for its id maps.
    if let Err(e) = bulkhead_images::userns::child_wait() {
        eprintln!("bulkhead: {}", bulkhead_agent_proto::report(&e));
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let usage = !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            let _ = e.print();
            // Like docker: a bad `run`/`exec` flag is bulkhead's failure (125), not the workload's.
            let sub = std::env::args().nth(1).unwrap_or_default();
            return match (usage, sub.as_str()) {
                (false, _) => ExitCode::SUCCESS,
                (true, "run" | "exec") => ExitCode::from(run::EXIT_BULKHEAD),
                (true, _) => ExitCode::from(2),
            };
        }
    };
    if let Command::Image(cmd) = &cli.command {
        if let Some(done) = image::rerun_rootless(cmd) {
            return done.unwrap_or_else(|e| {
                eprintln!("bulkhead: {e:#}");
                ExitCode::FAILURE
            });
        }
    }
    let (result, failure) = match cli.command {
        Command::Supervise {
            data,
            notify_fd,
            id,
        } => return crate::runtime::supervisor::main(data, id, notify_fd),
        Command::FenceWatch {
            id,
            deadline_file,
            kill_after_ms,
        } => return crate::runtime::fence_watch::main(&id, &deadline_file, kill_after_ms),
        Command::Dns { bridge } => return crate::network::dns::server::main(&bridge),
        Command::Copy {
            spec,
            pid,
            workload,
            root,
            id_base,
        } => {
            return ExitCode::from(crate::runtime::copy::helper_main(
                &spec,
                pid,
                workload.as_deref(),
                root.as_deref(),
                id_base,
            ))
        }
        Command::Wg { iface, key } => {
            return crate::network::overlay::userspace::main(&iface, &key)
        }
        Command::Run(a) => (run::run(*a), run::EXIT_BULKHEAD),
        Command::Exec(a) => (workloads::exec(a), run::EXIT_BULKHEAD),
        Command::Ps(a) => (workloads::ps(a), 1),
        Command::Logs(a) => (workloads::logs(a), 1),
        Command::Stop(a) => (workloads::stop(a), 1),
        Command::Kill(a) => (workloads::kill(a), 1),
        Command::Rm(a) => (workloads::rm(a), 1),
        Command::Inspect(a) => (workloads::inspect(a), 1),
        Command::Cp(a) => (copy::cp(a).map(|()| 0), 1),
        Command::Kernel(cmd) => (kernel::run(cmd).map(|()| 0), 1),
        Command::Network(cmd) => (network::run(cmd).map(|()| 0), 1),
        Command::Volume(cmd) => (volume::run(cmd).map(|()| 0), 1),
        Command::System(cmd) => (network::system(cmd).map(|()| 0), 1),
        Command::Image(cmd) => (image::run(cmd).map(|()| 0), 1),
        Command::Bench(cmd) => (crate::bench::run(cmd).map(|()| 0), 1),
        Command::Server(a) => (cluster::server(a).map(|()| 0), 1),
        Command::Deploy(a) => (cluster::deploy(a).map(|()| 0), 1),
        Command::Service(cmd) => (cluster::service(cmd).map(|()| 0), 1),
        Command::Instance(cmd) => (cluster::instance(cmd), 1),
        Command::Node(cmd) => (cluster::node(cmd).map(|()| 0), 1),
        Command::Tenant(cmd) => (cluster::tenant(cmd).map(|()| 0), 1),
        Command::Token(cmd) => (cluster::tokens(cmd).map(|()| 0), 1),
        Command::Tls(cmd) => (cluster::tls(cmd).map(|()| 0), 1),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bulkhead",
                &mut std::io::stdout(),
            );
            (Ok(0), 1)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
