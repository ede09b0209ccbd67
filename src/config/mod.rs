//! Command line, environment and configuration file: the settings, one struct per
//! subcommand (`settings`), and their parsing (`file`): the `--config` file gives settings
//! new defaults, so clap layers flags > environment > file > defaults.

mod file;
mod settings;

pub use file::{Parsed, parse};
pub use settings::*;
