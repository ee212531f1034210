//! The `ringrun` launcher: placement, process table, output, failure policy.
