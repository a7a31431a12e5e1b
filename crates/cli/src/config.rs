//! Options of the network commands (`serve`, `fetch`, `node`): one type
//! each that is both the command-line flags and the TOML config file
//! (`--config FILE`; a flag overrides the file). Every default lives in one
//! place, the library's (`NodeConfig::default()`, `ServeLimits::default()`,
//! `ChainSetup::new`), and is applied in [`NetOpts::node_config`] and
//! friends; the help texts name the same values (a test checks them).

use clap::Args;
use serde::Deserialize;
use statesync_net::libp2p::Multiaddr;
use statesync_node::{IoOptions, NodeConfig, ServeLimits};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `tls` or `noise`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecurityArg {
    /// libp2p's TLS 1.3 with AES-128-GCM where the CPU has AES instructions.
    Tls,
    /// libp2p's noise (ChaCha20-Poly1305).
    Noise,
}

/// A rate in MiB/s; fractions allowed (`0.5`).
pub fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB/s (e.g. 24 or 0.5)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?}: a rate must be above 0"));
    }
    Ok(v)
}

fn mib(v: f64) -> u64 {
    (v * (1u64 << 20) as f64) as u64
}

/// Network options shared by `serve`, `fetch` and `node`.
#[derive(Args, Deserialize, Default, Clone, Debug)]
#[serde(default, rename_all = "kebab-case")]
pub struct NetOpts {
    /// Data directory: identity key, fetch staging and progress (node:
    /// blocks, checkpoints, live state).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Listen address(es), e.g. /ip4/127.0.0.1/tcp/4001 or
    /// /ip4/127.0.0.1/udp/0/quic-v1 [default: a free TCP port on 127.0.0.1].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Peers to connect to: multiaddrs ending in /p2p/<peer id>.
    #[arg(long = "peer")]
    #[serde(rename = "peers")]
    pub peers: Vec<String>,
    /// Write the first listen address (with /p2p/<peer id>) to this file.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Keep at least this many peers connected; discovery runs below it
    /// [default: 8].
    #[arg(long)]
    pub min_peers: Option<usize>,
    /// Connect to at most this many peers [default: 64].
    #[arg(long)]
    pub max_peers: Option<usize>,
    /// Write a JSON status (peers, connections, progress, chain) to this file
    /// every 250 ms.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Security protocol proposed first when dialling over TCP; both are
    /// always accepted [default: tls].
    #[arg(long, value_enum)]
    pub security: Option<SecurityArg>,
}

/// Serving limits (`serve` and `node`).
#[derive(Args, Deserialize, Default, Clone, Debug)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServeOpts {
    /// Serving rate limit per peer, MiB/s (fractions allowed) [default: 512].
    #[arg(long, value_parser = parse_rate)]
    pub peer_rate_mib: Option<f64>,
    /// Serving rate limit over all peers, MiB/s [default: 2048].
    #[arg(long, value_parser = parse_rate)]
    pub global_rate_mib: Option<f64>,
    /// Requests answered at once per peer; more are answered BUSY
    /// [default: 16].
    #[arg(long)]
    pub max_concurrent: Option<usize>,
}

impl NetOpts {
    /// Flags over file: a flag given wins; lists replace.
    pub fn over(self, file: NetOpts) -> NetOpts {
        NetOpts {
            data: self.data.or(file.data),
            listen: if self.listen.is_empty() {
                file.listen
            } else {
                self.listen
            },
            peers: if self.peers.is_empty() {
                file.peers
            } else {
                self.peers
            },
            addr_file: self.addr_file.or(file.addr_file),
            min_peers: self.min_peers.or(file.min_peers),
            max_peers: self.max_peers.or(file.max_peers),
            status_file: self.status_file.or(file.status_file),
            metrics: self.metrics.or(file.metrics),
            security: self.security.or(file.security),
        }
    }

    /// The data directory (required).
    pub fn data_dir(&self) -> Result<PathBuf> {
        self.data
            .clone()
            .ok_or_else(|| "--data (or `data` in --config) is required".into())
    }

    /// The library's configuration, defaults filled in.
    pub fn node_config(&self, serve: &ServeOpts) -> Result<NodeConfig> {
        let parse = |s: &String| -> Result<Multiaddr> {
            s.parse().map_err(|e| format!("address {s:?}: {e}").into())
        };
        let d = NodeConfig::default();
        // `..d` keeps fields that only some builds have (fault injection).
        #[allow(clippy::needless_update)]
        Ok(NodeConfig {
            listen: self.listen.iter().map(parse).collect::<Result<_>>()?,
            peers: self.peers.iter().map(parse).collect::<Result<_>>()?,
            min_peers: self.min_peers.unwrap_or(d.min_peers),
            max_peers: self.max_peers.unwrap_or(d.max_peers),
            security: match self.security {
                Some(SecurityArg::Noise) => statesync_node::Security::Noise,
                Some(SecurityArg::Tls) => statesync_node::Security::Tls,
                None => d.security,
            },
            limits: serve.limits(),
            io: io_from_env(),
            ..d
        })
    }
}

impl ServeOpts {
    /// Flags over file.
    pub fn over(self, file: ServeOpts) -> ServeOpts {
        ServeOpts {
            peer_rate_mib: self.peer_rate_mib.or(file.peer_rate_mib),
            global_rate_mib: self.global_rate_mib.or(file.global_rate_mib),
            max_concurrent: self.max_concurrent.or(file.max_concurrent),
        }
    }

    /// The limits, defaults filled in.
    pub fn limits(&self) -> ServeLimits {
        let d = ServeLimits::default();
        ServeLimits {
            peer_bytes_per_sec: self.peer_rate_mib.map_or(d.peer_bytes_per_sec, mib),
            global_bytes_per_sec: self.global_rate_mib.map_or(d.global_bytes_per_sec, mib),
            max_concurrent_per_peer: self.max_concurrent.unwrap_or(d.max_concurrent_per_peer),
            ..d
        }
    }
}

/// The I/O switches, from the environment (`STATESYNC_DIRECT_IO=0`,
/// `STATESYNC_REFLINK=0` turn an optimisation off, to measure without it or
/// on a filesystem that misbehaves with it).
pub fn io_from_env() -> IoOptions {
    let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
    IoOptions {
        direct_io: on("STATESYNC_DIRECT_IO"),
        reflink: on("STATESYNC_REFLINK"),
    }
}

/// Reads a TOML config file into `T`; unknown keys are errors (a typo must
/// not silently fall back to a default).
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let de =
        toml::Deserializer::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    let mut unknown = Vec::new();
    let v: T = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    if !unknown.is_empty() {
        return Err(format!(
            "config {}: unknown key{} {}",
            path.display(),
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        )
        .into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the help texts name are the library's.
    #[test]
    fn help_defaults_match_the_library() {
        let d = NodeConfig::default();
        let l = ServeLimits::default();
        let help = {
            use clap::CommandFactory;
            #[derive(clap::Parser)]
            struct T {
                #[command(flatten)]
                n: NetOpts,
                #[command(flatten)]
                s: ServeOpts,
            }
            T::command().render_long_help().to_string()
        };
        for want in [
            format!("[default: {}]", d.min_peers),
            format!("[default: {}]", d.max_peers),
            format!("[default: {}]", l.peer_bytes_per_sec >> 20),
            format!("[default: {}]", l.global_bytes_per_sec >> 20),
            format!("[default: {}]", l.max_concurrent_per_peer),
        ] {
            assert!(help.contains(&want), "help lacks {want}:\n{help}");
        }
        assert_eq!(d.security, statesync_node::Security::Tls);
    }

    #[test]
    fn rates_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("24"), Ok(24.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
        let s = ServeOpts {
            peer_rate_mib: Some(0.5),
            ..Default::default()
        };
        assert_eq!(s.limits().peer_bytes_per_sec, 512 << 10);
    }

    #[test]
    fn config_files_refuse_unknown_keys_and_flags_win() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            "data = \"x\"\nmin-peers = 3\npeers = [\"/ip4/1.2.3.4/tcp/1\"]\n",
        )
        .unwrap();
        let file: NetOpts = load(&p).unwrap();
        assert_eq!(file.min_peers, Some(3));
        let flags = NetOpts {
            min_peers: Some(5),
            ..Default::default()
        };
        let m = flags.over(file);
        assert_eq!(m.min_peers, Some(5));
        assert_eq!(m.data, Some(PathBuf::from("x")));
        assert_eq!(m.peers.len(), 1);
        std::fs::write(&p, "min-peer = 3\n").unwrap();
        let e = load::<NetOpts>(&p).unwrap_err().to_string();
        assert!(e.contains("unknown key min-peer"), "{e}");
    }
}
