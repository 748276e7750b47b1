//! End-to-end tests: the real `sipward` binary on temporary data dirs.

mod at_rest;
mod attacks;
mod backup;
mod bad_input;
mod baresip;
mod calls;
mod cli;
mod console;
mod guard;
mod harness;
mod import;
mod peers;
mod regenerate;
mod registrar;
mod trunk_calls;
mod trunks;
