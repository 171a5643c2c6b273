//! Real workloads shared by tracer's integration tests (`tracer/tests/integration`) and its
//! benchmarks (`cargo xtask bench`): two network namespaces joined by a veth pair
//! ([`netns::NetnsPair`]), bounded SYN floods between them, and Debian's nginx with a throw-away
//! configuration ([`nginx::Nginx`]). Everything made here is removed on drop, and traffic never
//! leaves the namespaces (or 127.0.0.1) it creates.

pub mod netns;
pub mod nginx;
