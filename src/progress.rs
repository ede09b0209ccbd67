//! Progress of long command-line work (`verify`, `export`, `purge`, `migrate`): a bar with
//! rate and ETA when stderr is a terminal, else a plain line on stderr at the start, every
//! 5 seconds, and at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is written.
const EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    /// What is counted: `events`, `tenants`, `migrations`.
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress of `what` over `total` of `unit`.
    pub fn new(what: &'static str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit}, {{per_sec}}, {{eta}} left"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::new(total).with_style(style).with_message(what)
        });
        if bar.is_none() {
            eprintln!("{what}: {total} {unit} to go");
        }
        let now = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last_line: now,
            bar,
        }
    }

    /// `n` more are done.
    pub fn advance(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// `done` of the total are done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.last_line.elapsed() >= EVERY => {
                self.last_line = Instant::now();
                let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                let left = self.total.saturating_sub(self.done) as f64 / rate.max(1e-3);
                eprintln!(
                    "{}: {} of {} {}, {rate:.0}/s, about {left:.0} s left",
                    self.what, self.done, self.total, self.unit
                );
            }
            None => {}
        }
    }

    /// The work is over.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: {} {} in {:.1} s",
            self.what,
            self.done,
            self.unit,
            self.started.elapsed().as_secs_f64()
        );
    }
}
