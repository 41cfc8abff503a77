//! Terminal progress for model downloads (indicatif), shown on stderr.

use indicatif::{ProgressBar, ProgressStyle};

/// Reports store progress with a spinner or a byte bar.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A progress reporter (silent when stderr is not a terminal).
    pub fn new() -> Bar {
        Bar { bar: None }
    }
}

impl engine_store::source::Progress for Bar {
    fn phase(&mut self, message: &str, total: Option<u64>) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let b = match total {
            Some(t) => {
                let b = ProgressBar::new(t);
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            }
        };
        b.set_message(message.to_string());
        self.bar = Some(b);
    }

    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
