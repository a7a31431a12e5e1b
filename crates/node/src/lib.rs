//! The embeddable statesync node.
pub mod chain_node;
pub mod fetch_driver;
pub mod metrics;
pub mod p2p;
pub mod serve;
pub mod session;

/// Bytes in binary units for log lines (`1.5 MiB`).
pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A rate for log lines (`12.0 MiB/s`).
pub fn rate(bytes_: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes(((bytes_ as f64) / secs) as u64))
}
