//! Progress bars for the long offline commands (`import`, `export`, `verify`, `repair`): a
//! bar with rate and ETA on stderr when stderr is a terminal, nothing at all when it is not
//! (scripts, pipes, CI logs) or when the command was given `--quiet`.
//!
//! The bar never touches stdout, so what scripts read there (export's JSON Lines, verify's
//! report) is the same with or without it; lines printed while a bar is drawn go through
//! [`Progress::suspend`] so they do not tear it.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is redrawn at most: often enough to look alive, rarely enough to cost
/// nothing next to the work it reports.
const REDRAW_PER_SEC: u8 = 10;
/// How often a bar whose work is stuck in one long step still redraws its elapsed time.
const TICK_MS: u64 = 250;

/// What the bar counts: items (memories, vaults, logs) or bytes of an input file.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    Items,
    Bytes,
}

/// A progress bar, or nothing. Every method is a no-op on the hidden one.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `total` units labelled `what`, drawn only when stderr is a terminal and
    /// `quiet` is false.
    pub(crate) fn new(what: &'static str, total: u64, unit: Unit, quiet: bool) -> Progress {
        Self::with_terminal(what, total, unit, quiet, std::io::stderr().is_terminal())
    }

    fn with_terminal(
        what: &'static str,
        total: u64,
        unit: Unit,
        quiet: bool,
        terminal: bool,
    ) -> Progress {
        if quiet || !terminal {
            return Progress { bar: None };
        }
        let template = match unit {
            Unit::Items => {
                "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, ETA {eta}) {elapsed}"
            }
            Unit::Bytes => {
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {elapsed}"
            }
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(
            Some(total),
            ProgressDrawTarget::stderr_with_hz(REDRAW_PER_SEC),
        )
        .with_style(style)
        .with_message(what);
        bar.enable_steady_tick(Duration::from_millis(TICK_MS));
        Progress { bar: Some(bar) }
    }

    #[cfg(test)]
    pub(crate) fn is_visible(&self) -> bool {
        self.bar.is_some()
    }

    pub(crate) fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub(crate) fn set_position(&self, position: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    /// Runs `f` with the bar cleared, then redraws it (for lines printed meanwhile).
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Leaves the bar at its final state (the reader sees the rate it ran at), on a line
    /// of its own: what is printed next starts below it.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            eprintln!();
        }
    }
}

impl Drop for Progress {
    /// A command that fails midway leaves its bar where it stopped, not spinning.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_quiet_or_not_a_terminal() {
        assert!(!Progress::with_terminal("x", 10, Unit::Items, true, true).is_visible());
        assert!(!Progress::with_terminal("x", 10, Unit::Items, false, false).is_visible());
        let shown = Progress::with_terminal("x", 10, Unit::Bytes, false, true);
        assert!(shown.is_visible());
        shown.inc(3);
        assert_eq!(shown.suspend(|| 7), 7);
        shown.finish();
    }
}
