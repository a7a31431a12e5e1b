//! `statesync`: the command-line tool around the `statesync-node` library.
//!
//! Parsing, configuration (flags and TOML files, see [`config`]), logging
//! ([`logging`]), terminal and JSON output ([`output`]); the network
//! commands ([`serve`], [`fetch`], [`node`]) drive an embedded node through
//! its handle and events; the developer tools ([`tools`], benchmarks, the
//! demo) live here, apart from the node.

// Doc comments here are also the --help texts, which write placeholders the
// way command lines do (`/p2p/<peer id>`), not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod bench;
mod bench_blocks;
mod bench_gossip;
mod bench_scale;
mod bench_sync;
mod config;
mod demo;
mod demo_net;
mod fetch;
mod logging;
mod metrics_http;
mod netrun;
mod node;
mod output;
mod report;
mod serve;
mod tools;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

#[derive(Parser)]
#[command(
    name = "statesync",
    version,
    about = "Fast, safe catch-up for replicated state machines"
)]
struct Cli {
    /// Machine-readable output on stdout: a JSON document, or JSON lines of
    /// events for `serve` and `node`; errors as JSON too.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars and only warnings in the log.
    #[arg(long, global = true)]
    quiet: bool,
    /// Log lines as text or as JSON objects (levels from RUST_LOG,
    /// default info).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Tool(tools::ToolCmd),
    /// Serve the checkpoints of a store to peers.
    Serve(serve::ServeArgs),
    /// Fetch the checkpoint with a trusted root from peers.
    Fetch(fetch::FetchArgs),
    /// Write a chain's genesis (and demo validator keys) into a directory.
    Genesis(node::GenesisArgs),
    /// Run a node of the reference chain: produce or follow blocks, serve
    /// blocks and checkpoints, catch up by replay or state sync.
    Node(node::NodeArgs),
    /// Print this node's peer id (creating its identity if needed).
    Id {
        /// The node's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Benchmarks against the reference tools (minutes; not part of the tests).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// A local network of chain nodes and a late joiner catching up (see
    /// README); --walkthrough for the state layer alone.
    Demo(demo::DemoArgs),
}

/// Keeps freed buffers in the heap instead of returning them to the kernel:
/// chunk responses are megabytes each, and glibc's default (mmap per large
/// block, trim on free) makes every response fault in and zero fresh pages,
/// which measured as a quarter of the fetcher's CPU time. And at most two
/// heap arenas: glibc's default (8 per core) gives each of the many threads
/// (tokio workers, the blocking pool's file readers, the writer) its own
/// arena, each kept at its high-water mark and fragmented; a node's resident
/// memory then grew for the whole of a 30-minute soak (+25% after the
/// warm-up), and with two arenas it stays flat at under half of that.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.quiet);
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut causes = Vec::new();
            let mut src = e.source();
            while let Some(s) = src {
                causes.push(s.to_string());
                src = s.source();
            }
            if json {
                output::print_json(&serde_json::json!({
                    "error": e.to_string(),
                    "causes": causes,
                }));
            }
            eprintln!("error: {e}");
            for c in causes {
                eprintln!("  caused by: {c}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    let quiet = cli.quiet;
    let bars = !quiet && !json;
    match cli.cmd {
        Cmd::Tool(t) => tools::run(t, json, bars),
        Cmd::Serve(a) => serve::run(a, json, bars),
        Cmd::Fetch(a) => fetch::run(a, json, bars),
        Cmd::Genesis(a) => {
            let p = node::write_genesis(&a)?;
            if json {
                output::print_json(&serde_json::json!({ "genesis": p }));
            } else {
                outln!("{}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Node(a) => node::run(a, json, bars),
        Cmd::Id { data } => {
            let kp = statesync_net::load_or_create_identity(&data.join("identity.key"))?;
            let id = kp.public().to_peer_id();
            if json {
                output::print_json(&serde_json::json!({ "peer_id": id.to_string() }));
            } else {
                outln!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => bench::run(b, json),
        Cmd::Demo(a) => demo::run(a, json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every command says what it is.
    #[test]
    fn every_flag_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                if a.get_id() == "help" || a.get_id() == "version" {
                    continue;
                }
                let help = a.get_help().or(a.get_long_help()).map(|h| h.to_string());
                if help.is_none_or(|h| h.trim().is_empty()) {
                    missing.push(format!("{path} --{}", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "statesync", &mut missing);
        assert!(
            missing.is_empty(),
            "flags without help:\n{}",
            missing.join("\n")
        );
    }
}
