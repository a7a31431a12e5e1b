//! Output: human text or JSON on stdout, a progress bar on a terminal.
//!
//! Everything the binary prints to stdout goes through `outln!` /
//! [`print_json`]: when the reader goes away (`statesync manifest show m
//! --files | head`), the command ends quietly with exit code 0 instead of
//! panicking on the broken pipe.

use indicatif::{ProgressBar, ProgressStyle};
use statesync_manifest::build::Progress;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Writes one line to stdout; a closed stdout ends the process quietly.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = r.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader has all it wanted.
            std::process::exit(0);
        }
        eprintln!("error: write to stdout: {e}");
        std::process::exit(2);
    }
}

/// `println!` for stdout that ends quietly when the reader is gone.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::write_line(format_args!($($arg)*)) };
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => write_line(format_args!("{s}")),
        Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
    }
}

/// Prints a value as one line of JSON on stdout (JSON-lines streams).
pub fn print_json_line<T: serde::Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => write_line(format_args!("{s}")),
        Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
    }
}

/// Bytes in binary units.
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

/// A rate in binary units per second.
pub fn rate(bytes_: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes(((bytes_ as f64) / secs) as u64))
}

/// A progress bar over [`Progress`] counters, drawn on stderr while the work
/// runs, only when stderr is a terminal and `enabled`.
pub struct Bar {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    pub fn start(label: &'static str, progress: Arc<Progress>, enabled: bool) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Bar { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let pb = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.set_message(label);
            while !s.load(Ordering::Relaxed) {
                pb.set_length(progress.total.load(Ordering::Relaxed));
                pb.set_position(progress.done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
            pb.finish_and_clear();
        });
        Bar {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
