//! End-to-end tests: the real `sipward` binary on temporary data dirs.

mod attack_console;
mod attack_dialogs;
mod attack_flood;
mod attack_flows;
mod attacks;
mod backup;
mod bad_input;
mod baresip;
mod calls;
mod cli;
mod console;
mod console_entry;
mod door;
mod guard;
mod harness;
mod import;
mod peers;
mod provisioning;
mod regenerate;
mod registrar;
mod relay;
mod revoke;
mod settings;
mod trunk_calls;
mod trunks;
mod user_agent;
