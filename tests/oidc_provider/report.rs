//! The run's report: every check is printed (`ok` / `FAIL`) and counted.

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub struct Report {
    pub t0: Instant,
    pub passed: AtomicUsize,
    pub failed: Mutex<Vec<String>>,
}

impl Default for Report {
    fn default() -> Report {
        let (passed, failed) = (AtomicUsize::new(0), Mutex::default());
        Report {
            t0: Instant::now(),
            passed,
            failed,
        }
    }
}

impl Report {
    pub fn step(&self, title: &str) {
        println!("\n--- [{:.1}s] {title}", self.t0.elapsed().as_secs_f64());
    }

    pub fn info(&self, msg: impl Display) {
        println!("  info {msg}");
    }

    /// Counts and prints one check; `detail` is printed when it fails.
    pub fn check(&self, name: impl Into<String>, ok: bool, detail: impl Display) {
        let name = name.into();
        if ok {
            self.passed.fetch_add(1, Ordering::SeqCst);
            println!("  ok   {name}");
        } else {
            let detail = detail.to_string().replace('\n', "\n       ");
            println!("  FAIL {name}\n       {detail}");
            self.failed.lock().expect("lock").push(name);
        }
    }
}
