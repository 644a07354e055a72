//! `bulkhead kernel build|path`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use bulkhead_images::kernel::{self, BuildOptions, BuildProgress};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel (Linux 6.1 from Debian's linux-source-6.1 with
    /// bulkhead's microVM config) unless it is already cached; print its path.
    ///
    /// As root it installs the packages it needs with apt-get. The kernel is
    /// cached under ~/.cache/bulkhead/kernel/<key>/ (key: config fragment +
    /// source version; BULKHEAD_CACHE moves the cache) with its .config. The
    /// build fails if any symbol the fragment lists did not survive
    /// `make olddefconfig`.
    Build {
        /// Parallel make jobs (default: number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Print the path of the cached guest kernel (vmlinux); fails if none is built.
    Path,
}

pub fn run(cmd: KernelCommand) -> Result<()> {
    match cmd {
        KernelCommand::Build { jobs } => {
            let mut opts = BuildOptions::default();
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            let mut progress = TerminalProgress::new();
            let k = kernel::build(&opts, &mut progress)?;
            if progress.did_work {
                eprintln!("built in {:.0?}", progress.started.elapsed());
            }
            println!("{}", k.vmlinux.display());
        }
        KernelCommand::Path => println!("{}", kernel::find_built()?.vmlinux.display()),
    }
    Ok(())
}

/// A live bar on a terminal; on a pipe or in CI, a line per phase and every
/// 10% of the compile, so logs show the build is alive.
pub(crate) struct TerminalProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    did_work: bool,
    last_tenth: u64,
}

impl TerminalProgress {
    pub(crate) fn new() -> Self {
        Self {
            bar: None,
            started: Instant::now(),
            did_work: false,
            last_tenth: 0,
        }
    }
}

impl BuildProgress for TerminalProgress {
    fn phase(&mut self, what: &str) {
        self.did_work = true;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("kernel: {what}");
    }

    fn compiled(&mut self, done: u64, estimate: u64, line: &str) {
        if !std::io::stderr().is_terminal() {
            let tenth = done * 10 / estimate.max(1);
            if tenth > self.last_tenth {
                self.last_tenth = tenth;
                eprintln!(
                    "kernel: ~{}% ({done} steps, {:.0?})",
                    (tenth * 10).min(99),
                    self.started.elapsed()
                );
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(estimate);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/~{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        bar.set_length(estimate);
        bar.set_position(done);
        bar.set_message(line.to_string());
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
