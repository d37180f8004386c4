//! The `narpush` binary: parses the command line and hands off to `cli`.
//!
//! Exit codes: 0 success; 1 the command ran but some paths failed (they are listed);
//! 2 nothing was done because of bad input (usage, config, keys, paths) or an unusable target.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything reads a key or credentials (see narpush::secrets).
    if let Err(e) = narpush::secrets::make_non_dumpable() {
        eprintln!("narpush: warning: cannot make this process non-dumpable: {e}");
    }
    keep_big_allocations_out_of_the_heap();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(outcome) => outcome.exit_code(),
        Err(error) => {
            eprintln!("narpush: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Allocations of 1 MiB and more (NAR part buffers, zstd's job buffers) are mapped on their own
/// and returned to the system when freed. By default glibc raises this threshold to the size
/// of the largest block freed so far, after which such buffers come from the heap arenas and
/// stay there, fragmented: measured on a 509 MiB closure with 2 jobs, 98 MiB of peak RSS
/// instead of 54 MiB.
fn keep_big_allocations_out_of_the_heap() {
    const THRESHOLD: std::ffi::c_int = 1 << 20;
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it is called before any
    // other thread exists, with a documented parameter and value.
    #[allow(unsafe_code)]
    let accepted = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, THRESHOLD) };
    if accepted != 1 {
        eprintln!(
            "narpush: warning: the allocator refused M_MMAP_THRESHOLD; memory use may be higher"
        );
    }
}
