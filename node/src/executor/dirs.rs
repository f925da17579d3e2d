//! Which host directories a function may be granted: only under the node's
//! `[wasm] allowed_dirs`, after resolving symlinks (so neither `..` nor a link can lead out),
//! and writable only where the node's config allows writes.

use std::path::{Path, PathBuf};

use fogline_core::manifest::DirGrant;

use super::ExecError;

/// The node's policy for host directories.
#[derive(Debug, Clone, Default)]
pub struct DirPolicy {
    /// Allowed roots, resolved.
    roots: Vec<PathBuf>,
    allow_write: bool,
}

impl DirPolicy {
    /// The policy of `[wasm] allowed_dirs` and `allow_write_dirs`. Roots that do not exist
    /// are kept as written (nothing can be granted under them until they do).
    pub fn new(allowed: &[PathBuf], allow_write: bool) -> DirPolicy {
        DirPolicy {
            roots: allowed
                .iter()
                .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
                .collect(),
            allow_write,
        }
    }

    /// Checks a grant; returns the resolved host path to open.
    pub fn check(&self, i: usize, d: &DirGrant) -> Result<PathBuf, ExecError> {
        let refuse = |why: String| ExecError::Invalid(format!("dirs[{i}].host: {why}"));
        if self.roots.is_empty() {
            return Err(refuse(format!(
                "{:?} cannot be granted: this node allows no host directories (set [wasm] allowed_dirs)",
                d.host
            )));
        }
        let real = std::fs::canonicalize(Path::new(&d.host))
            .map_err(|e| refuse(format!("{:?}: {e}", d.host)))?;
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(refuse(format!(
                "{:?} (resolved: {}) is not under an allowed directory ({})",
                d.host,
                real.display(),
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !d.read_only && !self.allow_write {
            return Err(refuse(format!(
                "{:?} is granted writable, but this node allows only read-only directories (set [wasm] allow_write_dirs)",
                d.host
            )));
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant(host: &Path, read_only: bool) -> DirGrant {
        DirGrant {
            host: host.display().to_string(),
            guest: "/data".into(),
            read_only,
        }
    }

    #[test]
    fn grants_stay_under_the_allowed_roots() {
        let t = tempfile::tempdir().unwrap();
        let ok = t.path().join("allowed");
        let inner = ok.join("inner");
        let out = t.path().join("secret");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let p = DirPolicy::new(std::slice::from_ref(&ok), false);
        assert!(p.check(0, &grant(&inner, true)).is_ok());
        let e = p.check(0, &grant(&out, true)).unwrap_err().to_string();
        assert!(e.contains("not under an allowed directory"), "{e}");
        // A symlink inside the allowed root that points out of it is followed, and refused.
        #[cfg(unix)]
        {
            let link = ok.join("escape");
            std::os::unix::fs::symlink(&out, &link).unwrap();
            let e = p.check(0, &grant(&link, true)).unwrap_err().to_string();
            assert!(e.contains("not under an allowed directory"), "{e}");
        }
        let e = p.check(0, &grant(&inner, false)).unwrap_err().to_string();
        assert!(e.contains("only read-only"), "{e}");
        assert!(DirPolicy::new(&[ok], true)
            .check(0, &grant(&inner, false))
            .is_ok());
        let e = DirPolicy::default()
            .check(0, &grant(&inner, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allows no host directories"), "{e}");
    }
}
