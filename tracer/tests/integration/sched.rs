//! sched integration tests (none yet).

use libtest_mimic::Trial;

pub fn tests() -> Vec<Trial> {
    vec![]
}
