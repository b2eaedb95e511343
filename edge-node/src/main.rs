use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use edge_node::{
    app::{App, init_logging},
    config::Config,
    xdp::cli::{self, XdpArgs},
};

// glibc's malloc showed up at ~11% of a proxy profile (arena locks, consolidation);
// mimalloc's per-thread heaps avoid both. Built without transparent huge pages (Cargo
// feature no_thp): with them, buffers freed and reused under HTTP/2 load made the kernel
// zero fresh 2 MiB pages (~10% of CPU) and RSS grew by hundreds of MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// edge-node: an eBPF/XDP-accelerated edge server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it the embedded default is used.
    #[arg(short, long, global = true, env = "EDGE_NODE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node (the default).
    Run,
    /// Validate the configuration and exit.
    Check,
    /// Inspect and edit the XDP maps of a running node.
    Xdp(XdpArgs),
    /// Replace the running node with the binary now on disk, without losing a
    /// connection: it hands its listening sockets and XDP state to the new process,
    /// which takes over, then drains. Asks through the admin API (admin.listen, with the
    /// configured token); the same as sending the node SIGUSR2. Exits non-zero with the
    /// reason when the new process does not start (the running node serves on).
    Upgrade,
    /// The fleet this node belongs to (`[fleet]`).
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// The fleet's nodes: region, version, start, last heartbeat, live or lapsed.
    Status,
}

/// Errors end the process with their message alone (and its causes on one line):
/// returned from `main`, anyhow would print a stack trace whenever RUST_BACKTRACE is
/// set, as it often is on build hosts.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // Before anything else: while this process is single-threaded (the environment is
    // edited), and while the binary's path still names this binary.
    edge_node::upgrade::record_exe();
    let inherited = edge_node::upgrade::Inherited::from_env()?;
    let cli = Cli::parse();
    let (config, source) = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            edge_node::app::check(&config)?;
            println!("{source}: OK");
            Ok(())
        }
        Command::Xdp(args) => cli::run(args, config.xdp.pin_root.clone()),
        Command::Fleet(FleetCommand::Status) => {
            print!("{}", edge_node::fleet::members::status(&config.fleet)?);
            Ok(())
        }
        Command::Upgrade => {
            let token = config.admin.token()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "edge-node upgrade asks through the admin API, which is off (set admin.token \
                     or admin.token_file); or send the node SIGUSR2 \
                     (systemctl kill -s USR2 edge-node)"
                )
            })?;
            let done = edge_node::upgrade::request(config.admin.listen, &token)?;
            println!("{done}");
            Ok(())
        }
        Command::Run => {
            let _log = init_logging(&config);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(App::new(config, cli.config).inherit(inherited).run())
        }
    }
}
