//! Embedding statesync in an application: a key-value store that keeps its
//! data in files, checkpoints them every N writes and serves the
//! checkpoints; and a second instance that starts with nothing, fetches the
//! latest checkpoint from the first over libp2p, and carries on writing.
//!
//! ```sh
//! cargo run --release -p statesync-node --example kv            # both, in one process
//! cargo run --release -p statesync-node --example kv -- --writes 5000 --every 1000
//! ```
//!
//! What an integrator needs, in order:
//!
//! 1. A [`Store`] of checkpoints beside the application's state directory.
//!    [`Store::create_from_dir`] copies the state into a new checkpoint
//!    (hard-linking files unchanged since the previous one) and computes its
//!    manifest; the manifest's root is what the application's consensus
//!    must agree on and publish (here the first instance hands it over
//!    directly).
//! 2. A [`NodeBuilder`] with a data directory (identity, staging areas), a
//!    listen address and the store: [`NodeBuilder::start`] returns a
//!    [`Node`] handle and an [`Events`] stream. [`Node::publish`] announces
//!    a new checkpoint at once.
//! 3. A joining instance builds a node with a bootstrap peer, calls
//!    [`Node::fetch`] with the trusted root and an empty output directory,
//!    and waits for [`FetchEvent::Done`] (or [`FetchEvent::Failed`], whose
//!    [`Fault`](statesync_node::Fault) says whether a peer, nobody, or the
//!    local disk was at fault). Every byte is verified against the root; a
//!    crash resumes where it stopped.
//! 4. The fetched directory is the application's state: open it and go on.

use statesync_node::{Event, Events, FetchEvent, FetchRequest, Node, NodeBuilder, NodeConfig};
use statesync_store::{CreateOptions, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The application: a key-value store, one file per key under `dir`.
struct Kv {
    dir: PathBuf,
}

impl Kv {
    fn open(dir: &Path) -> Result<Kv> {
        std::fs::create_dir_all(dir.join("keys"))?;
        Ok(Kv {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join("keys").join(key)
    }

    /// Writes `value` under `key` (a new file renamed into place, so a
    /// checkpoint's hard link to the old one is never written through).
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, self.path(key))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }

    /// Every key and value, sorted.
    fn entries(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(self.dir.join("keys"))? {
            let e = e?;
            let k = e.file_name().to_string_lossy().into_owned();
            out.insert(k, std::fs::read(e.path())?);
        }
        Ok(out)
    }

    /// A digest of the whole store, to compare two instances.
    fn digest(&self) -> Result<String> {
        let mut h = blake3::Hasher::new();
        for (k, v) in self.entries()? {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(&v);
        }
        Ok(h.finalize().to_hex()[..16].to_string())
    }
}

/// A value that differs per key and per write.
fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = format!("value {i} written in round {round}\n").into_bytes();
    v.resize(64 + (i % 4000) as usize, b'.');
    v
}

/// The first instance: writes, checkpoints every `every` writes, serves.
struct Writer {
    kv: Kv,
    store: Store,
    state: PathBuf,
    writes: u64,
}

impl Writer {
    /// Writes `n` more keys, taking a checkpoint every `every` writes;
    /// returns the latest checkpoint's (height, root).
    fn write(
        &mut self,
        n: u64,
        every: u64,
        node: &Node,
    ) -> Result<(u64, statesync_manifest::hash::Hash)> {
        let mut latest = None;
        for _ in 0..n {
            let i = self.writes;
            // Most writes update one of the first thousand keys; some add.
            let key = format!("key-{:05}", if i.is_multiple_of(3) { i } else { i % 1000 });
            self.kv.put(&key, &value(i, i / every))?;
            self.writes += 1;
            if self.writes.is_multiple_of(every) {
                let c = self.store.create_from_dir(
                    self.writes,
                    &self.state,
                    &CreateOptions::default(),
                )?;
                println!(
                    "writer: checkpoint at write {} root {} ({} files, {} linked from the previous one)",
                    self.writes, c.info.root, c.info.files, c.files_linked
                );
                // Announce it now rather than within the next second.
                node.publish();
                latest = Some((self.writes, c.info.root));
            }
        }
        latest.ok_or_else(|| "no checkpoint taken".into())
    }
}

/// Waits for the first listen address.
async fn listen_addr(events: &mut Events) -> Result<statesync_net::libp2p::Multiaddr> {
    loop {
        match events.recv().await {
            Some(Event::Listening { addr }) => return Ok(addr),
            Some(_) => {}
            None => return Err("node stopped before listening".into()),
        }
    }
}

/// Waits for the outcome of fetch `id`, printing its progress.
async fn fetch_outcome(events: &mut Events, id: u64) -> Result<statesync_node::FetchSummary> {
    while let Some(ev) = events.recv().await {
        let Event::Fetch { id: fid, event } = ev else {
            continue;
        };
        if fid != id {
            continue;
        }
        match event {
            FetchEvent::ManifestVerified { files, bytes } => {
                println!("joiner: manifest verified: {files} files, {bytes} bytes")
            }
            FetchEvent::Done(s) => return Ok(*s),
            FetchEvent::Failed(e) => {
                return Err(format!("fetch failed ({:?} at fault): {}", e.fault, e.message).into());
            }
            _ => {}
        }
    }
    Err("node stopped".into())
}

async fn run(dir: &Path, writes: u64, every: u64) -> Result<()> {
    // --- The first instance: an application with state, serving it. ---
    let a = dir.join("a");
    let state = a.join("state");
    let (store, _) = Store::open(a.join("store"))?;
    let (node_a, mut events_a) = NodeBuilder::new(a.join("node"))
        .config(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .serve(store.clone())
        .start()
        .await?;
    let addr_a = listen_addr(&mut events_a).await?;
    println!("writer: serving on {addr_a}");
    let mut w = Writer {
        kv: Kv::open(&state)?,
        store,
        state: state.clone(),
        writes: 0,
    };
    let (height, root) = w.write(writes, every, &node_a)?;
    let digest_a = w.kv.digest()?;
    println!(
        "writer: {} writes, latest checkpoint {height} (root {root}), store digest {digest_a}",
        w.writes
    );
    // The first node goes on writing while the second joins: a checkpoint
    // already taken is never affected by later writes.
    let drain_a = tokio::spawn(async move { while events_a.recv().await.is_some() {} });

    // --- The second instance: starts with nothing. ---
    let b = dir.join("b");
    let (node_b, mut events_b) = NodeBuilder::new(b.join("node"))
        .config(NodeConfig {
            peers: vec![addr_a.clone()],
            ..NodeConfig::default()
        })
        .start()
        .await?;
    // The trusted root comes from the application's consensus; here the
    // writer handed it over.
    let state_b = b.join("state");
    let id = node_b.fetch(FetchRequest::new(root, &state_b)).await?;
    let summary = tokio::time::timeout(Duration::from_secs(120), fetch_outcome(&mut events_b, id))
        .await
        .map_err(|_| "fetch did not finish in 120 s")??;
    println!(
        "joiner: fetched checkpoint {height}: {} files, {} bytes from {} peer(s) in {:.2}s",
        summary.files, summary.bytes_fetched, summary.peers_used, summary.seconds
    );
    // The writer moved on meanwhile.
    let (_, writer_next) = w.write(every, every, &node_a)?;

    // --- The joiner continues from the fetched state. ---
    let kv_b = Kv::open(&state_b)?;
    let digest_b = kv_b.digest()?;
    if digest_b != digest_a {
        return Err(
            format!("joiner's data {digest_b} differs from the writer's {digest_a}").into(),
        );
    }
    if kv_b.get("key-00007").is_none() {
        return Err("joiner lost a key".into());
    }
    println!("joiner: same data as the writer at checkpoint {height} (digest {digest_b})");
    let (store_b, _) = Store::open(b.join("store"))?;
    let mut wb = Writer {
        kv: kv_b,
        store: store_b,
        state: state_b,
        writes: height,
    };
    let (h2, r2) = wb.write(every, every, &node_b)?;
    // The same writes on the same data give the same checkpoint root.
    if r2 != writer_next {
        return Err(
            format!("joiner's checkpoint {h2} has root {r2}, the writer's {writer_next}").into(),
        );
    }
    println!("joiner: carried on: its own checkpoint {h2} has the writer's root {r2}");

    node_b.shutdown().await;
    node_a.shutdown().await;
    let _ = drain_a.await;
    println!("ok");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut writes, mut every, mut dir) = (2000u64, 500u64, None);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse().ok());
        match a.as_str() {
            "--writes" => writes = num().unwrap_or(writes),
            "--every" => every = num().unwrap_or(every).max(1),
            "--dir" => dir = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: kv [--writes N] [--every N] [--dir DIR]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let tmp = tempdir();
    let dir = dir.unwrap_or_else(|| tmp.clone());
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let r = rt.block_on(run(&dir, writes, every));
    let _ = std::fs::remove_dir_all(&tmp);
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A fresh directory under the system's temporary directory.
fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("statesync-kv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
