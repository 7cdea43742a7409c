//! The `rlhf` command line.
