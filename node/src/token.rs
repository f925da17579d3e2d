//! The admin token: made at the first start, kept in the data folder readable by its owner
//! only, and shown once.

use std::path::Path;

/// Reads the token at `path`, or makes one; the second value is set when it was made now.
pub fn load_or_create(path: &Path) -> anyhow::Result<(String, Option<String>)> {
    load_or_create_with(path, || {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw)
            .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
        Ok(hex::encode(raw))
    })
}

/// Reads the secret at `path`, or writes the one `make` makes (readable by the owner
/// only); the second value is set when it was made now.
pub fn load_or_create_with(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<(String, Option<String>)> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok((t, None));
        }
        anyhow::bail!(
            "{} is damaged (too short); delete it to create a new one",
            path.display()
        );
    }
    let secret = make()?;
    write_private(path, &secret)?;
    Ok((secret.clone(), Some(secret)))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{text}\n"))?;
    Ok(())
}
