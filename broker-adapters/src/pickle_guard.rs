//! A pre-scan of a pickle that bounds how deeply its value nests, before `serde-pickle` (whose
//! value conversion, like the drop of the result, recurses once per level) can overflow the
//! stack on a hostile or broken payload: a 2 KB pickle can nest 1000 lists.
//!
//! It walks the opcodes like the unpickler's stack machine, but keeps only each stack entry's
//! nesting depth. Memo references take the depth the value had when it was memoised (later
//! appends to a memoised list are counted at the append), which bounds ordinary pickles exactly;
//! anything the walker does not understand is rejected, as the real decoder would reject it.

/// Why a pickle was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    TooDeep(usize),
    Malformed(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooDeep(limit) => write!(f, "nested deeper than {limit} levels"),
            Refused::Malformed(why) => write!(f, "malformed pickle ({why})"),
        }
    }
}

/// One entry of the simulated stack: a MARK, or a value of some nesting depth.
#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Value(usize),
}

/// Checks that the pickle's value nests at most `limit` levels.
pub fn check_depth(bytes: &[u8], limit: usize) -> Result<(), Refused> {
    scan(bytes, limit).map(|_| ())
}

/// What a pickle that passed the depth check holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// It names a global (`GLOBAL`, `STACK_GLOBAL`, `INST`): an object of some class, or a
    /// builtin used as a constructor.
    pub names_globals: bool,
}

/// [`check_depth`], also telling whether the pickle names any global.
pub fn scan(bytes: &[u8], limit: usize) -> Result<Scanned, Refused> {
    let mut scanned = Scanned {
        names_globals: false,
    };
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut next_memo: u64 = 0;
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], Refused> {
        let end = i
            .checked_add(n)
            .ok_or(Refused::Malformed("length overflow"))?;
        let s = bytes.get(*i..end).ok_or(Refused::Malformed("truncated"))?;
        *i = end;
        Ok(s)
    };
    let le = |s: &[u8]| {
        s.iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    let line = |i: &mut usize| -> Result<(), Refused> {
        let rest = bytes.get(*i..).ok_or(Refused::Malformed("truncated"))?;
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Refused::Malformed("no newline"))?;
        *i += n + 1;
        Ok(())
    };
    fn pop(stack: &mut Vec<Slot>) -> Result<usize, Refused> {
        match stack.pop() {
            Some(Slot::Value(d)) => Ok(d),
            _ => Err(Refused::Malformed("stack underflow")),
        }
    }
    /// Pops to the last MARK; the deepest value popped (0 when none).
    fn pop_mark(stack: &mut Vec<Slot>) -> Result<usize, Refused> {
        let mut deepest = 0;
        loop {
            match stack.pop() {
                Some(Slot::Mark) => return Ok(deepest),
                Some(Slot::Value(d)) => deepest = deepest.max(d),
                None => return Err(Refused::Malformed("no mark")),
            }
        }
    }
    fn top(stack: &mut [Slot]) -> Result<&mut usize, Refused> {
        match stack.last_mut() {
            Some(Slot::Value(d)) => Ok(d),
            _ => Err(Refused::Malformed("no value on the stack")),
        }
    }
    let mut deepest_seen = 0usize;
    loop {
        let op = *take(&mut i, 1)?
            .first()
            .ok_or(Refused::Malformed("truncated"))?;
        match op {
            b'.' => return Ok(scanned), // STOP
            // Arguments of fixed or prefixed length, pushing an atom.
            0x80 => {
                take(&mut i, 1)?;
            } // PROTO
            0x95 => {
                take(&mut i, 8)?;
            } // FRAME
            b'J' | b'G' => {
                take(&mut i, if op == b'J' { 4 } else { 8 })?;
                stack.push(Slot::Value(0));
            }
            b'K' => {
                take(&mut i, 1)?;
                stack.push(Slot::Value(0));
            }
            b'M' => {
                take(&mut i, 2)?;
                stack.push(Slot::Value(0));
            }
            0x8a | 0x8c | b'U' | b'C' => {
                let n = le(take(&mut i, 1)?) as usize;
                take(&mut i, n)?;
                stack.push(Slot::Value(0));
            }
            0x8b | b'X' | b'T' | b'B' => {
                let n = le(take(&mut i, 4)?) as usize;
                take(&mut i, n)?;
                stack.push(Slot::Value(0));
            }
            0x8d | 0x8e | 0x96 => {
                let n = le(take(&mut i, 8)?) as usize;
                take(&mut i, n)?;
                stack.push(Slot::Value(0));
            }
            // Text-line arguments pushing an atom (protocol 0).
            b'I' | b'L' | b'F' | b'S' | b'V' => {
                line(&mut i)?;
                stack.push(Slot::Value(0));
            }
            b'c' => {
                line(&mut i)?;
                line(&mut i)?;
                scanned.names_globals = true;
                stack.push(Slot::Value(0));
            } // GLOBAL
            b'N' | 0x88 | 0x89 => stack.push(Slot::Value(0)), // NONE, NEWTRUE, NEWFALSE
            // Memo.
            b'p' => {
                line(&mut i)?;
            }
            b'q' => {
                let k = le(take(&mut i, 1)?);
                memo.insert(k, *top(&mut stack)?);
            }
            b'r' => {
                let k = le(take(&mut i, 4)?);
                memo.insert(k, *top(&mut stack)?);
            }
            0x94 => {
                memo.insert(next_memo, *top(&mut stack)?);
                next_memo += 1;
            } // MEMOIZE
            b'g' => {
                line(&mut i)?;
                stack.push(Slot::Value(0));
            }
            b'h' | b'j' => {
                let k = le(take(&mut i, if op == b'h' { 1 } else { 4 })?);
                stack.push(Slot::Value(memo.get(&k).copied().unwrap_or(0)));
            }
            // Containers.
            b']' | b'}' | b')' | 0x8f => stack.push(Slot::Value(1)), // EMPTY_LIST/DICT/TUPLE/SET
            b'(' => stack.push(Slot::Mark),
            b'a' => {
                let v = pop(&mut stack)?;
                let t = top(&mut stack)?;
                *t = (*t).max(v + 1);
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                let t = top(&mut stack)?;
                *t = (*t).max(v.max(k) + 1);
            }
            b'e' | b'u' | 0x90 => {
                let m = pop_mark(&mut stack)?;
                let t = top(&mut stack)?;
                *t = (*t).max(m + 1);
            }
            b'l' | b't' | b'd' | 0x91 => {
                let m = pop_mark(&mut stack)?;
                stack.push(Slot::Value(m + 1));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut m = 0;
                for _ in 0..n {
                    m = m.max(pop(&mut stack)?);
                }
                stack.push(Slot::Value(m + 1));
            }
            // Object construction: the result nests its arguments.
            b'R' | 0x81 | b'b' => {
                let a = pop(&mut stack)?;
                let t = top(&mut stack)?;
                *t = (*t).max(a + 1);
            }
            0x92 => {
                let k = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                let t = top(&mut stack)?;
                *t = (*t).max(a.max(k) + 1);
            }
            0x93 => {
                scanned.names_globals = true;
                let a = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                stack.push(Slot::Value(a.max(b)));
            } // STACK_GLOBAL
            b'o' => {
                let m = pop_mark(&mut stack)?;
                stack.push(Slot::Value(m + 1));
            }
            b'i' => {
                scanned.names_globals = true;
                line(&mut i)?;
                line(&mut i)?;
                let m = pop_mark(&mut stack)?;
                stack.push(Slot::Value(m + 1));
            }
            // Stack manipulation.
            b'0' => {
                stack.pop().ok_or(Refused::Malformed("stack underflow"))?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let d = *top(&mut stack)?;
                stack.push(Slot::Value(d));
            }
            _ => return Err(Refused::Malformed("unsupported opcode")),
        }
        if let Some(Slot::Value(d)) = stack.last() {
            deepest_seen = deepest_seen.max(*d);
        }
        if deepest_seen > limit {
            return Err(Refused::TooDeep(limit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 0x02];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    }

    #[test]
    fn counts_nesting_of_lists() {
        assert_eq!(check_depth(&nested(3), 3), Ok(()));
        assert_eq!(check_depth(&nested(4), 3), Err(Refused::TooDeep(3)));
        assert_eq!(
            check_depth(&nested(100_000), 100),
            Err(Refused::TooDeep(100))
        );
    }

    #[test]
    fn flat_and_truncated_input() {
        // [1, 2, 3] built with MARK ... APPENDS
        let flat = [
            0x80, 0x02, b']', b'(', b'K', 1, b'K', 2, b'K', 3, b'e', b'.',
        ];
        assert_eq!(check_depth(&flat, 1), Ok(()));
        assert_eq!(
            check_depth(&flat[..6], 10),
            Err(Refused::Malformed("truncated"))
        );
        assert!(check_depth(&[0xff], 10).is_err());
    }
}
