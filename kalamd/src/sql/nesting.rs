//! Limits on how deeply a statement nests. Parsing, the depth check and DataFusion's planner
//! recurse once per level, so a statement nested thousands deep would overflow the stack
//! (kalamd and kalam-lived run SQL on 32 MiB stacks; these limits use a fraction of that even
//! in debug builds). What the tokens show is refused before parsing; expression chains that
//! parse flat into deep trees are refused after.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use kalam_types::error::{ErrorCode, KalamError};

/// Deepest expression nesting (and parenthesis nesting) a statement may have. The parser
/// limits parentheses, but a chain like `1 + 1 + … + 1` parses flat into a tree as deep as it
/// is long.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// Most UNION / INTERSECT / EXCEPT in one statement: each is a level of the planner's recursion.
pub const MAX_SET_OPERATIONS: usize = 256;

/// Most common table expressions (`name AS (…)`) in one statement: a chain of CTEs, each
/// reading the previous one, nests the planner's recursion one level per link.
pub const MAX_CTES: usize = 256;

fn too_deep() -> KalamError {
    KalamError::new(
        ErrorCode::InvalidSql,
        format!("expression nested too deeply (more than {MAX_EXPRESSION_DEPTH} levels)"),
    )
}

/// Refuses, from the tokens alone: parentheses deeper than [`MAX_EXPRESSION_DEPTH`] (nested
/// expressions, subqueries and derived tables), more than [`MAX_SET_OPERATIONS`] set operations
/// (which the parser chains without recursing, one level per operation) and more than
/// [`MAX_CTES`] `AS (` (common table expressions).
pub fn check_structure(tokens: &[TokenWithSpan]) -> Result<(), KalamError> {
    let (mut depth, mut set_operations, mut ctes) = (0usize, 0usize, 0usize);
    let mut previous_is_as = false;
    for t in tokens.iter().map(|t| &t.token).filter(|t| !matches!(t, Token::Whitespace(_))) {
        match t {
            Token::LParen => {
                depth += 1;
                ctes += usize::from(previous_is_as);
                if depth > MAX_EXPRESSION_DEPTH {
                    return Err(too_deep());
                }
                if ctes > MAX_CTES {
                    return Err(KalamError::new(
                        ErrorCode::InvalidSql,
                        format!("too many common table expressions (more than {MAX_CTES})"),
                    ));
                }
            }
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if matches!(w.keyword, Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT) => {
                set_operations += 1;
                if set_operations > MAX_SET_OPERATIONS {
                    return Err(KalamError::new(
                        ErrorCode::InvalidSql,
                        format!("too many set operations (more than {MAX_SET_OPERATIONS} UNION, INTERSECT or EXCEPT)"),
                    ));
                }
            }
            _ => {}
        }
        previous_is_as = matches!(t, Token::Word(w) if w.keyword == Keyword::AS);
    }
    Ok(())
}

/// Refuses statements whose expressions nest deeper than [`MAX_EXPRESSION_DEPTH`]; the walk
/// stops at the limit, so checking a deeper tree costs no more stack than the limit allows.
pub fn check_depth<V: Visit>(node: &V) -> Result<(), KalamError> {
    struct Depth {
        current: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.current += 1;
            if self.current > MAX_EXPRESSION_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
    }
    match node.visit(&mut Depth { current: 0 }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(too_deep()),
    }
}
