//! System tests: `tests/full_stack.rs` runs the whole local stack (broker, registry,
//! gateway, processors, switch API, pcscd with the software SIM, the modem simulator over
//! PC/SC) and checks the three data flows with independent clients where possible.
//! `tests/make_up_down.rs` runs `make up`'s script in a scratch folder and checks that
//! `make down` leaves no process or port behind.
