//! A linearizability checker for the fault tests: a Wing–Gong search with memoisation (as
//! Porcupine does) over a single register's history of reads, writes and compare-and-swaps.
//!
//! Each key of the store is an independent register, so a history is checked key by key
//! (linearizability is compositional). An operation whose outcome is unknown (a timeout, a
//! connection lost mid-request, a 5xx) may have taken effect at any point after its invocation or
//! never: it is given an infinite return time, and the search may leave it out at the end. A
//! timeout is never counted as a success.

use std::collections::HashSet;

/// What an operation did, with what the client saw.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Read `None` (no object) or a value.
    Read(Option<String>),
    /// Wrote the value unconditionally.
    Write(String),
    /// Compare-and-swap: replace `expected` with `new`; `swapped` is what the client saw
    /// (`false`: refused with a conflict).
    Cas { expected: String, new: String, swapped: bool },
}

/// One operation: invocation and return times (any monotonic unit), and its kind. `returned` is
/// `None` for an operation whose outcome is unknown.
#[derive(Clone, Debug)]
pub struct Operation {
    pub invoked: u64,
    pub returned: Option<u64>,
    pub kind: Kind,
}

/// Applies `operation` to the register `state`: the next state if the operation can take effect
/// there with the outcome the client saw, else `None`.
fn step(state: &Option<String>, operation: &Operation) -> Option<Option<String>> {
    let known = operation.returned.is_some();
    match &operation.kind {
        Kind::Read(seen) => (!known || seen == state).then(|| state.clone()),
        Kind::Write(value) => Some(Some(value.clone())),
        Kind::Cas { expected, new, swapped } => {
            let matches = state.as_deref() == Some(expected.as_str());
            if !known {
                return Some(if matches { Some(new.clone()) } else { state.clone() });
            }
            match (swapped, matches) {
                (true, true) => Some(Some(new.clone())),
                (false, false) => Some(state.clone()),
                _ => None,
            }
        }
    }
}

/// Whether `history` (one register, starting as `initial`) is linearizable. On failure, says how
/// far the longest linearizable prefix got.
pub fn check(history: &[Operation], initial: Option<String>) -> Result<(), String> {
    // Reads whose outcome is unknown have no effect: leave them out.
    let mut operations: Vec<Operation> = history.iter().filter(|op| op.returned.is_some() || !matches!(op.kind, Kind::Read(_))).cloned().collect();
    operations.sort_by_key(|op| op.invoked);
    let count = operations.len();
    let known = operations.iter().filter(|op| op.returned.is_some()).count();
    let mut search = Search { operations: &operations, seen: HashSet::new(), deepest: 0, steps: 0 };
    let mut done = vec![0u64; count.div_ceil(64)];
    // Run on a thread with a large stack: the search recurses once per linearized operation.
    let found = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 * 1024 * 1024)
            .spawn_scoped(scope, || search.run(&mut done, initial, known, 0))
            .expect("spawn the checker thread")
            .join()
            .expect("the checker thread")
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "not linearizable: no order of the {count} operations explains what the clients saw (the longest linearizable prefix has {} operations)",
            search.deepest
        ))
    }
}

struct Search<'a> {
    operations: &'a [Operation],
    seen: HashSet<(Vec<u64>, Option<String>)>,
    deepest: usize,
    steps: u64,
}

impl Search<'_> {
    fn run(&mut self, done: &mut Vec<u64>, state: Option<String>, known_left: usize, depth: usize) -> bool {
        self.deepest = self.deepest.max(depth);
        self.steps += 1;
        if known_left == 0 {
            return true;
        }
        let is_done = |done: &[u64], index: usize| done[index / 64] & (1 << (index % 64)) != 0;
        // Only an operation invoked before every pending operation has returned can go next.
        let horizon = (0..self.operations.len())
            .filter(|&i| !is_done(done, i))
            .filter_map(|i| self.operations[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        for index in 0..self.operations.len() {
            let operation = &self.operations[index];
            if operation.invoked > horizon {
                break;
            }
            if is_done(done, index) {
                continue;
            }
            let Some(next) = step(&state, operation) else { continue };
            done[index / 64] |= 1 << (index % 64);
            if self.seen.insert((done.clone(), next.clone())) {
                let left = known_left - usize::from(operation.returned.is_some());
                if self.run(done, next, left, depth + 1) {
                    return true;
                }
            }
            done[index / 64] &= !(1 << (index % 64));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked: u64, returned: Option<u64>, kind: Kind) -> Operation {
        Operation { invoked, returned, kind }
    }

    fn read(value: Option<&str>) -> Kind {
        Kind::Read(value.map(str::to_owned))
    }

    fn write(value: &str) -> Kind {
        Kind::Write(value.to_owned())
    }

    #[test]
    fn sequential_and_concurrent_histories_that_explain_themselves_pass() {
        let history = [op(0, Some(1), write("a")), op(2, Some(3), read(Some("a"))), op(4, Some(10), write("b")), op(5, Some(6), read(Some("a"))), op(7, Some(8), read(Some("b")))];
        assert!(check(&history, None).is_ok());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_fails() {
        let history = [op(0, Some(1), write("a")), op(2, Some(3), write("b")), op(4, Some(5), read(Some("a")))];
        let error = check(&history, None).expect_err("a lost write is not linearizable");
        assert!(error.contains("not linearizable"), "{error}");
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let history = [op(0, Some(1), write("a")), op(2, Some(3), read(None))];
        assert!(check(&history, None).is_err());
    }

    #[test]
    fn reads_going_back_in_time_fail() {
        // b's write overlaps both reads, but once one read saw b a later read cannot see a.
        let history = [op(0, Some(1), write("a")), op(2, Some(20), write("b")), op(3, Some(4), read(Some("b"))), op(5, Some(6), read(Some("a")))];
        assert!(check(&history, None).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_or_not() {
        let took_effect = [op(0, None, write("a")), op(5, Some(6), read(Some("a")))];
        assert!(check(&took_effect, None).is_ok());
        let never = [op(0, None, write("a")), op(5, Some(6), read(None))];
        assert!(check(&never, None).is_ok());
        // But it cannot take effect before it was invoked.
        let too_early = [op(0, Some(1), read(Some("a"))), op(5, None, write("a"))];
        assert!(check(&too_early, None).is_err());
    }

    #[test]
    fn compare_and_swap_outcomes_must_match_the_state() {
        let cas = |expected: &str, new: &str, swapped| Kind::Cas { expected: expected.into(), new: new.into(), swapped };
        let good = [op(0, Some(1), write("a")), op(2, Some(3), cas("a", "b", true)), op(4, Some(5), cas("a", "c", false)), op(6, Some(7), read(Some("b")))];
        assert!(check(&good, None).is_ok());
        // Two swaps from the same value cannot both succeed.
        let double = [op(0, Some(1), write("a")), op(2, Some(5), cas("a", "b", true)), op(3, Some(6), cas("a", "c", true))];
        assert!(check(&double, None).is_err());
    }
}
