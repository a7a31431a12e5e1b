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
