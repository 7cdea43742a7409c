//! Integration tests, one module per feature (ripgrep's layout).

mod cli;
mod model;
