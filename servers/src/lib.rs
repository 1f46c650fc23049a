//! One HTTP API, the TechEmpower test types, served by interchangeable I/O models.
//!
//! The crate is split so that a variant is only the code that moves bytes and waits:
//!
//! | module | owns |
//! |---|---|
//! | [`app`] | routes, `queries` clamping, the response a route gets (I/O-agnostic) |
//! | [`render`] | JSON and the escaping HTML template for fortunes |
//! | [`http1`] | the HTTP/1.1 codec of the variants that do not use hyper |
//! | [`date`] | the `Date` header, formatted at most once per second per thread |
//! | [`rng`] | random world ids and numbers |
//! | [`metrics`] | Prometheus counters and histograms shared by every variant |
//! | [`logging`] | the request log (`--log sync|buffered|stdout|off`) |
//! | [`profile`] | CPU profiles and flame graphs on request (`/debug/pprof/...`) |
//! | [`database`] | the drivers that run `db`'s SQL |
//! | [`io`] | one module per I/O model: the only place where variants differ |
//! | [`cli`] | flags and environment variables of the `server` binary |
//! | [`launch`] | starting and stopping a `server` process (for `lab` and the tests) |

pub mod app;
pub mod cli;
pub mod database;
pub mod date;
pub mod http1;
pub mod io;
pub mod launch;
pub mod logging;
pub mod metrics;
pub mod profile;
pub mod render;
pub mod rng;
pub mod sockopt;
