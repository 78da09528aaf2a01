//! Names that become directory names and process arguments: server names (a replica's data
//! directory and its `--name`) and shard ids (a directory under each replica). One rule for
//! both, checked before anything is stored: 1 to [`MAX_NAME_LEN`] ASCII letters, digits,
//! `-`, `_` or `.`, starting with a letter, a digit or `_`. So a name can never be read as
//! a flag (`-h`, `--data-dir`), a hidden file (`.hidden`), or a path (`..`, `a/b`).

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks `name` against the rule above; the message names `what` it is (e.g. "server
/// name", "shard id") and says what is allowed.
pub fn check(what: &str, name: &str) -> std::result::Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok && name.len() <= MAX_NAME_LEN && name.bytes().all(allowed) {
        return Ok(());
    }
    Err(format!(
        "invalid {what} {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', \
         starting with a letter, a digit or '_'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_be_flags_paths_or_hidden_files_are_refused() {
        for ok in ["Server1", "sh1", "_x", "a-b.c_d", "9", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(check("server name", ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "-h",
            "--data-dir",
            ".",
            "..",
            "...",
            ".hidden",
            "a/b",
            "../../x/pwn",
            "a b",
            "é",
            &long,
        ] {
            let e = check("shard id", bad).unwrap_err();
            assert!(e.starts_with("invalid shard id"), "{bad}: {e}");
        }
    }
}
