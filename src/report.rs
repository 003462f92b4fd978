//! One-line error reports for operators: an error and its causes, each said once.
//!
//! Errors that wrap another often print it too (`#[error("opening data dir: {0}")]` with the
//! same error as `source`), so following the chain naively repeats the cause; and some say
//! nothing useful without it (reqwest's "error sending request for url" hides "connection
//! refused"). `chain` walks the causes and skips any whose text is already in the report.

use std::error::Error;

/// `error: cause: cause`, without repeats (see the module doc).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    causes(std::iter::successors(
        Some(error),
        |e: &&(dyn Error + 'static)| (*e).source(),
    ))
}

/// The same for a chain given as its errors, outermost first (e.g. `anyhow::Error::chain`).
pub fn causes<'a>(errors: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for error in errors {
        let text = error.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening data dir: {0}")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Permission denied");
        let e = anyhow::Error::new(Wrapper(io)).context("starting");
        assert_eq!(
            causes(e.chain()),
            "starting: opening data dir: Permission denied"
        );
    }
}
