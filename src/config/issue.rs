//! One problem found in a configuration, as `wsgate check` and a refused reload report it.

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, array elements by index: `apps.echo.urls.0`, `listen.1.addr`.
    pub path: String,
    /// What is wrong, for operators.
    pub message: String,
}

impl Issue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue { path: path.into(), message: message.into() }
    }
}
