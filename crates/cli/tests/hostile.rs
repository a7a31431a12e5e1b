//! Hostile peers on real libp2p connections: an independent libp2p node
//! (its own swarm and codec, in this test process) that advertises the
//! root and then resets, truncates, refuses, stalls or trickles every data
//! answer, against the real `statesync fetch` process and real servers.
//!
//! A fetch must finish on the honest peers, and the hostile ones must get a
//! bounded number of requests (they are cooled off with growing backoff),
//! however quickly they fail.

mod common;

use common::*;
use serde_json::Value;
use statesync_proto::Hash;
use statesync_testkit::hostile::{self, Hostile, Mode};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn peer_record<'a>(sum: &'a Value, addr: &str) -> &'a Value {
    let id = peer_id(addr);
    sum["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == id.as_str())
        .unwrap_or_else(|| panic!("no record of {id} in {sum}"))
}

/// Three peers that reset, truncate or refuse every data stream, and one
/// honest peer that becomes reachable two seconds after the fetch starts.
#[test]
fn peers_that_reset_truncate_or_refuse_cannot_keep_a_fetch_from_finishing() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 120, "24MiB", "21");
    let r = Hash::from_hex(&root).unwrap();
    let bad: Vec<Hostile> = [Mode::Reset, Mode::Truncate, Mode::Refuse]
        .into_iter()
        .map(|m| hostile::start(m, r))
        .collect();
    // The honest server: identity and port chosen now, started later.
    let honest_data = d.path().join("honest");
    let honest_id = peer_of(&honest_data);
    let port = free_port();
    let honest_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{honest_id}");
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let starter = {
        let (store, data, log) = (
            store.clone(),
            honest_data.clone(),
            d.path().join("honest.log"),
        );
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            spawn(
                &[
                    "serve",
                    "--store",
                    s(&store),
                    "--data",
                    s(&data),
                    "--listen",
                    &listen,
                ],
                &log,
            )
        })
    };
    let out = d.path().join("out");
    let mut peers: Vec<&str> = bad.iter().map(|h| h.addr.as_str()).collect();
    peers.push(&honest_addr);
    let o = fetch(d.path(), "f", &root, &out, &peers, &[]);
    let _honest = starter.join().unwrap();
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    for h in &bad {
        let n = h.requests.load(Ordering::Relaxed);
        assert!(n >= 1, "{} was never asked", h.addr);
        assert!(
            n < 60,
            "{} data requests to a peer that failed every one",
            n
        );
        let rec = peer_record(&sum, &h.addr);
        assert_eq!(rec["bytes"], 0, "{rec}");
        assert!(
            rec["failures"].as_u64().unwrap() + rec["timeouts"].as_u64().unwrap() >= 1,
            "failures not counted: {rec}"
        );
    }
    assert!(peer_record(&sum, &honest_addr)["bytes"].as_u64().unwrap() > 0);
    assert!(sum["peers_banned"].as_array().unwrap().is_empty(), "{sum}");
}

/// Two stallers and a peer that answers at one byte per second next to one
/// honest peer: the manifest and the last chunks do not wait for them.
#[test]
fn stalling_and_trickling_peers_get_few_requests_and_the_fetch_completes() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 120, "24MiB", "22");
    let r = Hash::from_hex(&root).unwrap();
    let bad: Vec<Hostile> = [Mode::Stall, Mode::Stall, Mode::Trickle]
        .into_iter()
        .map(|m| hostile::start(m, r))
        .collect();
    let (_good, good_addr) = serve(d.path(), "good", &store, &[]);
    let out = d.path().join("out");
    let mut peers: Vec<&str> = bad.iter().map(|h| h.addr.as_str()).collect();
    peers.push(&good_addr);
    let o = fetch(d.path(), "f", &root, &out, &peers, &[]);
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    for h in &bad {
        let n = h.requests.load(Ordering::Relaxed);
        assert!(n < 30, "{n} data requests to a staller");
        assert_eq!(peer_record(&sum, &h.addr)["bytes"], 0);
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A client that opens streams, asks for chunks and never reads the
/// answers (the half-open stream attack): the server's answers in progress
/// are bounded per peer and in total and dropped when not drained, so its
/// memory stays bounded; the client is refused after its answers went
/// undelivered; an honest fetch from the same server completes meanwhile.
#[test]
fn a_client_that_never_reads_cannot_exhaust_the_servers_memory() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 80, "64MiB", "31");
    let status = d.path().join("srv.status");
    let (srv, addr) = serve(d.path(), "srv", &store, &["--status-file", s(&status)]);
    let pid = srv.pid();
    let r = Hash::from_hex(&root).unwrap();
    // 200 streams of 4 MiB answers at once (800 MiB if the server held
    // them all), then one more every 50 ms.
    let attacker = hostile::client(hostile::ClientMode::NeverReads, &addr, r, 4, 200, 2000);
    let mut peak = 0;
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.path().join("out");
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let mut peak = 0;
            while !s2.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        (stop, h)
    };
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &[]);
    sampler.0.store(true, Ordering::Relaxed);
    peak = peak.max(sampler.1.join().unwrap());
    let sum = summary(&o, d.path(), "f");
    verify(&out, &root);
    eprintln!(
        "server peak RSS {} MiB under attack ({} requests sent); honest fetch {:.2} s",
        peak / 1024,
        attacker.sent.load(Ordering::Relaxed),
        sum["seconds"].as_f64().unwrap_or(0.0)
    );
    assert!(attacker.sent.load(Ordering::Relaxed) >= 200);
    assert!(peak < 256 * 1024, "server RSS reached {} MiB", peak / 1024);
    // The undelivered answers are dropped after their drain deadline (10 s
    // plus 16 s for 4 MiB) and the client is refused from then on.
    wait_for(
        "the attacker's answers dropped and the attacker refused",
        Duration::from_secs(60),
        || {
            std::fs::read(&status)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| {
                    v["serve"]["undelivered"].as_u64().unwrap_or(0) > 0
                        && v["serve"]["refused"].as_u64().unwrap_or(0) > 0
                })
        },
    );
}

/// A peer whose requests are oversized (a length prefix beyond the
/// protocol's limit) is blocked after three: its connection closes and
/// every new one is refused, while honest fetches go on.
#[test]
fn a_peer_sending_oversized_requests_is_blocked() {
    let d = tempfile::tempdir().unwrap();
    let (store, root) = make_store(d.path(), "store", 20, "4MiB", "32");
    let status = d.path().join("srv.status");
    let (_srv, addr) = serve(d.path(), "srv", &store, &["--status-file", s(&status)]);
    let r = Hash::from_hex(&root).unwrap();
    let attacker = hostile::client(hostile::ClientMode::Oversized, &addr, r, 1, 8, 100);
    wait_for("the attacker blocked", Duration::from_secs(30), || {
        std::fs::read(&status)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["blocked"].as_u64() == Some(1))
    });
    // It keeps redialling; each connection is refused at once.
    let before = attacker.disconnects.load(Ordering::Relaxed);
    assert!(before >= 1);
    std::thread::sleep(Duration::from_secs(2));
    let out = d.path().join("out");
    let o = fetch(d.path(), "f", &root, &out, &[&addr], &[]);
    summary(&o, d.path(), "f");
    verify(&out, &root);
}
