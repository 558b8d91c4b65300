//! Failure fingerprints (issue #19, failure groups): which failures are "the same error".
//!
//! A fingerprint is computed from a task's one-line `error` and its `traceback`, as each adapter
//! reads them (Celery results and events, RQ `exc_info` and results entries, Dramatiq's
//! `options.traceback` and Results, taskiq results), from three parts:
//!
//! * the exception type, without its module (`taskiq_app.CardDeclined` and `CardDeclined` are
//!   one type: brokers spell it either way);
//! * the message with what varies between occurrences replaced by placeholders: UUIDs
//!   (`<uuid>`), hex (`0x7f3a` and runs of 8+ hex digits: `<hex>`), quoted values (`<str>`) and
//!   digit runs, alone or inside words (`<n>`: `card declined 3` and `card declined 41` are one
//!   message, `user_42` is `user_<n>`);
//! * the innermost [`FRAMES`] frames of the traceback's last `File "...", line N, in func` lines,
//!   each as a module-ish name (the file's last two path components, without `.py`) and the
//!   function. Line numbers are left out (an edit above the raise must not split a group) and so
//!   are the path's first components (the same bug in two checkouts, virtualenvs or hosts is one
//!   group).
//!
//! Error texts come from Redis and are untrusted: the function looks at most at
//! [`MAX_ERROR_BYTES`] of the error line and the last [`MAX_TRACEBACK_BYTES`] of the traceback
//! (the innermost frames are at its end), in one linear pass each, and its output is bounded.
//! Pure: no I/O, no clock.

use md5::{Digest, Md5};

/// How many innermost frames take part.
pub const FRAMES: usize = 3;
/// The part of the error line looked at.
pub const MAX_ERROR_BYTES: usize = 2048;
/// The part of the traceback looked at: its end.
pub const MAX_TRACEBACK_BYTES: usize = 16 * 1024;
/// The longest normalised message kept.
pub const MAX_MESSAGE_CHARS: usize = 300;
/// The longest exception type and frame part kept.
const MAX_NAME_CHARS: usize = 200;

/// One failure's group identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// 16 lower-case hex digits (the first 64 bits of an MD5 of the parts): stable across
    /// versions, platforms and processes, short enough for a URL.
    pub id: String,
    /// The exception type as the error names it (`ValueError`, `taskiq_app.CardDeclined`);
    /// `None` when the error does not start with one (`payload too large ...`).
    pub exception: Option<String>,
    /// The message with its variable parts replaced (`card declined <n>`).
    pub message: String,
    /// The innermost frames, outermost first, as `module.ish:function`.
    pub frames: Vec<String>,
}

/// The fingerprint of a failure, from its one-line error and its traceback (either may be
/// missing); `None` when both are missing or blank.
pub fn fingerprint(error: Option<&str>, traceback: Option<&str>) -> Option<Fingerprint> {
    let tail = traceback.map(traceback_tail);
    let line = match error.map(|e| first_line(head(e, MAX_ERROR_BYTES))) {
        Some(l) if !l.trim().is_empty() => l.trim(),
        // The error line is a traceback's last non-empty line.
        _ => tail
            .and_then(|t| t.lines().rev().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| head(l, MAX_ERROR_BYTES))?,
    };
    let (exception, message) = split_error_line(line);
    let message = truncate_chars(&normalise_message(message), MAX_MESSAGE_CHARS);
    let frames = tail.map(innermost_frames).unwrap_or_default();
    let short_type = exception.map(|e| e.rsplit('.').next().unwrap_or(e));
    let mut hash = Md5::new();
    hash.update(b"taskscope-fingerprint-v1\0");
    hash.update(short_type.unwrap_or("").as_bytes());
    hash.update(b"\0");
    hash.update(message.as_bytes());
    for frame in &frames {
        hash.update(b"\0");
        hash.update(frame.as_bytes());
    }
    let digest = hash.finalize();
    let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some(Fingerprint {
        id,
        exception: exception.map(|e| truncate_chars(e, MAX_NAME_CHARS)),
        message,
        frames,
    })
}

/// The first `max` bytes of `text`, cut on a character boundary.
fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The last [`MAX_TRACEBACK_BYTES`] of a traceback, starting on a whole line.
fn traceback_tail(traceback: &str) -> &str {
    if traceback.len() <= MAX_TRACEBACK_BYTES {
        return traceback;
    }
    let mut start = traceback.len() - MAX_TRACEBACK_BYTES;
    while !traceback.is_char_boundary(start) {
        start += 1;
    }
    let tail = &traceback[start..];
    // A cut line is not a line.
    match tail.find('\n') {
        Some(nl) => &tail[nl + 1..],
        None => tail,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// A dotted Python name: `ValueError`, `celery.exceptions.Retry`.
fn is_type_name(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !text.ends_with('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// `ValueError: card declined 3` -> (`ValueError`, `card declined 3`); `KeyError` -> (`KeyError`,
/// ``); anything else is all message.
fn split_error_line(line: &str) -> (Option<&str>, &str) {
    if let Some((kind, message)) = line.split_once(':') {
        if is_type_name(kind.trim_end()) {
            return (Some(kind.trim_end()), message.trim());
        }
    }
    if is_type_name(line) {
        return (Some(line), "");
    }
    (None, line)
}

fn is_letter(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `b[i..i + 36]` is a UUID (8-4-4-4-12 hex digits, a decimal one among them) standing
/// alone.
fn uuid_at(b: &[u8], i: usize) -> bool {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    if b.len() < i + 36 || b.get(i + 36).is_some_and(|&c| is_word(c)) {
        return false;
    }
    let id = &b[i..i + 36];
    id.iter().any(u8::is_ascii_digit)
        && id.iter().enumerate().all(|(k, &c)| {
            if DASHES.contains(&k) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A UUID or hex word starting at `i` (a token start): its placeholder and end.
fn id_at(b: &[u8], i: usize) -> Option<(&'static str, usize)> {
    if uuid_at(b, i) {
        return Some(("<uuid>", i + 36));
    }
    let end = (i..b.len()).find(|&j| !is_word(b[j])).unwrap_or(b.len());
    let word = &b[i..end];
    let hex_prefixed = word.len() > 2
        && (word.starts_with(b"0x") || word.starts_with(b"0X"))
        && word[2..].iter().all(u8::is_ascii_hexdigit);
    let hex_run = word.len() >= 8
        && word.iter().all(u8::is_ascii_hexdigit)
        && word.iter().any(u8::is_ascii_digit);
    (hex_prefixed || hex_run).then_some(("<hex>", end))
}

/// The message with its variable parts replaced by placeholders, whitespace collapsed. One
/// left-to-right pass: each byte is looked at a bounded number of times (a quote that never
/// closes is looked for once per quote character).
pub fn normalise_message(message: &str) -> String {
    let text = head(message, MAX_ERROR_BYTES);
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS * 2));
    // Quote characters known to have no closing quote after the current position.
    let mut unclosed = [false; 2];
    let mut plain = 0; // start of the text not yet copied
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let starts_token = i == 0 || !is_word(b[i - 1]);
        // A quote next to a letter is an apostrophe (`can't`); next to a digit it still
        // quotes, as it will once the digit is a placeholder (normalising twice changes
        // nothing).
        let opens = i == 0 || !is_letter(b[i - 1]);
        let replacement: Option<(&str, usize)> = if (c == b'\'' || c == b'"') && opens {
            let q = usize::from(c == b'"');
            let close = if unclosed[q] {
                None
            } else {
                (i + 1..b.len()).find(|&j| b[j] == c && b.get(j + 1).is_none_or(|&n| !is_letter(n)))
            };
            match close {
                Some(j) => Some(("<str>", j + 1)),
                None => {
                    unclosed[q] = true;
                    None
                }
            }
        } else if c.is_ascii_digit() || (is_word(c) && starts_token) {
            let id = if starts_token { id_at(b, i) } else { None };
            id.or_else(|| {
                c.is_ascii_digit().then(|| {
                    let end = (i..b.len())
                        .find(|&j| !b[j].is_ascii_digit())
                        .unwrap_or(b.len());
                    ("<n>", end)
                })
            })
        } else {
            None
        };
        match replacement {
            Some((placeholder, end)) => {
                out.push_str(&text[plain..i]);
                out.push_str(placeholder);
                i = end;
                plain = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[plain..]);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost [`FRAMES`] frames of a Python traceback, outermost first.
fn innermost_frames(traceback: &str) -> Vec<String> {
    let mut frames: Vec<&str> = traceback
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with("File \""))
        .take(FRAMES)
        .collect();
    frames.reverse();
    frames.into_iter().filter_map(frame_name).collect()
}

/// `  File "/srv/app/billing/tasks.py", line 62, in charge` -> `billing.tasks:charge`.
fn frame_name(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("File \"")?;
    let (path, after) = rest.split_once('"')?;
    let function = after
        .rsplit_once(", in ")
        .map(|(_, f)| f.trim())
        .unwrap_or("?");
    Some(format!(
        "{}:{}",
        truncate_chars(&module_ish(path), MAX_NAME_CHARS),
        truncate_chars(function, MAX_NAME_CHARS)
    ))
}

/// The last two components of a path, without the `.py` of the file: `/tmp/venv/lib/python3.11/
/// site-packages/celery/app/trace.py` -> `app.trace`; `<frozen runpy>` stays as it is.
fn module_ish(path: &str) -> String {
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let tail = &parts[parts.len().saturating_sub(2)..];
    let mut names: Vec<&str> = tail.to_vec();
    if let Some(last) = names.last_mut() {
        *last = last
            .strip_suffix(".py")
            .or_else(|| last.strip_suffix(".pyc"))
            .unwrap_or(last);
    }
    names.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_ids_hex_and_quoted_values_become_placeholders() {
        assert_eq!(normalise_message("card declined 3"), "card declined <n>");
        assert_eq!(
            normalise_message("order 7c9d4875-a02c-4dcb-b08a-c82e543624e9 not found"),
            "order <uuid> not found"
        );
        assert_eq!(
            normalise_message("object at 0x7f3a2b1c: sha deadbeef01 user_42"),
            "object at <hex>: sha <hex> user_<n>"
        );
        assert_eq!(
            normalise_message("no such key 'bob' in \"table 9\"; can't retry 2.5 s"),
            "no such key <str> in <str>; can't retry <n>.<n> s"
        );
        // Words made of hex letters, and an apostrophe inside a word, stay.
        assert_eq!(normalise_message("added a facade"), "added a facade");
        assert_eq!(normalise_message("it's   fine\t"), "it's fine");
        // A quote that never closes is text.
        assert_eq!(normalise_message("'open 5 'again"), "'open <n> 'again");
    }

    #[test]
    fn error_lines_split_into_type_and_message() {
        assert_eq!(
            split_error_line("ValueError: card declined 3"),
            (Some("ValueError"), "card declined 3")
        );
        assert_eq!(split_error_line("KeyError"), (Some("KeyError"), ""));
        assert_eq!(
            split_error_line("celery.exceptions.Retry: Retry in 1s"),
            (Some("celery.exceptions.Retry"), "Retry in 1s")
        );
        assert_eq!(
            split_error_line("payload too large: 5 MB"),
            (None, "payload too large: 5 MB")
        );
    }

    #[test]
    fn frames_are_module_ish_names_and_functions_without_lines() {
        assert_eq!(
            frame_name(r#"  File "/srv/app/billing/tasks.py", line 62, in charge"#).as_deref(),
            Some("billing.tasks:charge")
        );
        assert_eq!(
            frame_name(r#"  File "C:\app\billing\tasks.py", line 1, in charge"#).as_deref(),
            Some("billing.tasks:charge")
        );
        assert_eq!(
            frame_name(r#"  File "<frozen runpy>", line 88, in _run_code"#).as_deref(),
            Some("<frozen runpy>:_run_code")
        );
        assert_eq!(frame_name("  File \"unterminated"), None);
    }

    #[test]
    fn nothing_to_fingerprint_is_none() {
        assert_eq!(fingerprint(None, None), None);
        assert_eq!(fingerprint(Some("  "), Some("\n\n")), None);
    }
}
