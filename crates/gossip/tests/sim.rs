//! The simulation on small committees: every honest member gets the block
//! with a third of the relays Byzantine (dropping or forging), an
//! inconsistent proposer is caught by every honest member, and IDA gossip
//! beats flooding on delivery time and proposer upload.

use statesync_gossip::sim::{Byzantine, SimConfig, run_flood, run_ida, run_tree};

fn small() -> SimConfig {
    SimConfig {
        nodes: 96,
        block_len: 1_000_000,
        seed: 7,
        ..SimConfig::default()
    }
}

#[test]
fn every_honest_member_gets_the_block() {
    let cfg = small();
    let o = run_ida(&cfg);
    assert_eq!(o.delivered(), cfg.nodes - 1, "{o:?}");
    assert_eq!(o.rejected, 0);
    // The proposer uploads each byte about (k+m)/k times, not n times.
    let ratio = o.proposer_upload as f64 / cfg.block_len as f64;
    assert!(ratio < 2.0, "proposer uploaded {ratio:.2}x the block");
}

#[test]
fn a_third_of_relays_dropping_does_not_stop_delivery() {
    let cfg = SimConfig {
        byzantine: 1.0 / 3.0,
        byzantine_mode: Byzantine::Drop,
        ..small()
    };
    let o = run_ida(&cfg);
    let honest = cfg.nodes - 1 - ((cfg.nodes - 1) as f64 / 3.0).floor() as usize;
    assert_eq!(o.delivery.len(), honest);
    assert_eq!(o.delivered(), honest, "{o:?}");
}

#[test]
fn a_third_of_relays_forging_is_detected_and_does_not_stop_delivery() {
    let cfg = SimConfig {
        byzantine: 1.0 / 3.0,
        byzantine_mode: Byzantine::Forge,
        ..small()
    };
    let o = run_ida(&cfg);
    assert_eq!(o.delivered(), o.delivery.len(), "{o:?}");
    assert!(o.forged_detected > 0, "forged shards went unnoticed");
}

#[test]
fn an_inconsistent_proposer_is_caught_by_every_honest_member() {
    let cfg = SimConfig {
        inconsistent_proposer: true,
        ..small()
    };
    let o = run_ida(&cfg);
    assert_eq!(o.delivered(), 0, "an inconsistent block was delivered");
    assert_eq!(o.rejected, cfg.nodes - 1, "{o:?}");
}

#[test]
fn ida_beats_flooding_on_time_and_proposer_upload() {
    let cfg = small();
    let ida = run_ida(&cfg);
    let flood = run_flood(&cfg);
    let tree = run_tree(&cfg);
    assert_eq!(flood.delivered(), cfg.nodes - 1);
    assert_eq!(tree.delivered(), cfg.nodes - 1);
    let (i, f) = (ida.percentile(95.0), flood.percentile(95.0));
    assert!(i < f, "IDA p95 {i:.3}s is not below flooding's {f:.3}s");
    assert!(ida.proposer_upload < flood.proposer_upload * 2);
}

#[test]
fn the_simulation_is_deterministic() {
    let cfg = SimConfig {
        byzantine: 0.2,
        byzantine_mode: Byzantine::Forge,
        ..small()
    };
    let (a, b) = (run_ida(&cfg), run_ida(&cfg));
    assert_eq!(a.delivery, b.delivery);
    assert_eq!(a.total_bytes, b.total_bytes);
}
