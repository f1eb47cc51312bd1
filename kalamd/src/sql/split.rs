//! Splits a request body into statements at top-level `;` (the splitter is shared with the
//! CLI, so both agree on where statements end).

pub use kalam_types::split::split_statements;
