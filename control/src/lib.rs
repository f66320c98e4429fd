//! `kangaroo-control`: the one contract between `kangaroo-switch` and the programs that drive
//! it (the orchestrator's agents, operators' scripts).
//!
//! - [`mode`]: the datapath modes, one typed value from the command line to the file.
//! - [`config`]: the switch's and the rendezvous' configuration files as typed values, read and
//!   written with serde (the switch validates them further into its settings); a driver writes
//!   a file with [`config::SwitchFile::to_toml`], never by pasting text.
//! - [`api`]: the request bodies of the switch's control API.
//! - [`client`]: the client of the switch's control API (HTTP/1.1 over its Unix socket).
//! - [`extract`]: the path-parameter extractor both HTTP APIs share, whose rejection is the
//!   API's own JSON error.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod extract;
pub mod mode;

pub use mode::Mode;
