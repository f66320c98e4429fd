//! The tenant API's bearer token: generated once, kept in the data directory (mode 0600,
//! replaced atomically), and compared in time independent of where a guess differs.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "token";

/// Reads the API token from `dir`, creating one (mode 0600) if there is none.
///
/// # Errors
/// If the directory or file cannot be created or read.
pub fn load_or_create(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim().to_owned();
            check(&t).with_context(|| format!("{}", path.display()))?;
            return Ok(t);
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let t = generate();
    write(dir, &t)?;
    Ok(t)
}

/// A new random token (32 bytes, hex).
pub fn generate() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Writes `t` as the token file in `dir` (mode 0600, replaced atomically).
pub fn write(dir: &Path, t: &str) -> anyhow::Result<()> {
    let path = dir.join(TOKEN_FILE);
    crate::sys::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{TOKEN_FILE}.tmp.{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(t.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The fewest characters a token may have: it is the OpenStack face's password and the key its
/// tokens are signed with, so an empty or short one would let anyone in.
pub const MIN_LEN: usize = 32;

/// Checks a token read from a file or a shared store before it is used.
///
/// # Errors
/// It is shorter than [`MIN_LEN`] (an empty one included) or holds white space or control
/// characters; the message says which.
pub fn check(t: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        t.len() >= MIN_LEN,
        "the API token has {} characters; at least {MIN_LEN} are needed",
        t.len()
    );
    anyhow::ensure!(
        !t.chars().any(|c| c.is_whitespace() || c.is_control()),
        "the API token holds white space or control characters"
    );
    Ok(())
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let t = load_or_create(d.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(load_or_create(d.path()).unwrap(), t, "kept");
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(constant_time_eq(t.as_bytes(), t.as_bytes()));
        assert!(!constant_time_eq(t.as_bytes(), generate().as_bytes()));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn empty_short_or_odd_tokens_are_refused() {
        check(&generate()).unwrap();
        for bad in ["", "short", &format!("{} x", "a".repeat(40))] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        let e = check("").unwrap_err().to_string();
        assert!(e.contains("0 characters") && e.contains("32"), "{e}");
        // A token file an operator shortened is refused by name, not used.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(TOKEN_FILE), "guessable\n").unwrap();
        let e = format!("{:#}", load_or_create(d.path()).unwrap_err());
        assert!(e.contains(TOKEN_FILE) && e.contains("9 characters"), "{e}");
    }
}
