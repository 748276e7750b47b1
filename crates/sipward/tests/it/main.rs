//! End-to-end tests: the real `sipward` binary on temporary data dirs.

mod at_rest;
mod attack_console;
mod attack_console_writes;
mod attack_dialogs;
mod attack_flood;
mod attack_flows;
mod attack_gateway;
mod attack_revoke;
mod attack_settings;
mod attack_tls;
mod attack_transfer;
mod attacks;
mod backup;
mod bad_input;
mod baresip;
mod calls;
mod cli;
mod cluster;
mod conformance;
mod console;
mod console_entry;
mod door;
mod exhaustion;
mod guard;
mod harness;
mod import;
mod nodes;
mod peers;
/// One PostgreSQL cluster per test run (shared with the store's tests).
#[path = "../../../store/tests/support/pg.rs"]
mod pg;
mod provisioning;
mod regenerate;
mod registrar;
mod relay;
mod reload;
mod revoke;
mod service;
mod settings;
mod soak;
mod tls;
mod trunk_calls;
mod trunks;
mod user_agent;
mod voicemail;
mod voicemail_wire;
