//! Standard output for everything the CLI prints.
//!
//! `println!` panics when the reader has gone away (`kalam -c "…" | head -1`). Here a closed
//! pipe ends the process quietly with status 0, as it does for `grep` or `rg`: the reader took
//! what it wanted. Any other write error is reported on standard error and exits 1.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Prints a line; see [`write`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints without a newline and flushes (prompts); see [`write`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// Writes to standard output and flushes; a closed pipe ends the process.
pub fn write(args: Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ERROR: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
