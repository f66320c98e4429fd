//! `kangaroo`, the orchestrator: priced catalogs, cost-aware packing of nested VMs onto rented
//! infrastructure VMs, persistent state, the tenant API and the CLI.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod agentapi;
pub mod api;
pub mod catalog;
pub mod client;
pub mod driver;
pub mod http;
pub mod infra;
pub mod model;
pub mod openstack;
pub mod packing;
pub mod provider;
pub mod server;
pub mod service;
pub mod store;
pub mod sys;
pub mod tls;
pub mod token;
pub mod workload;
