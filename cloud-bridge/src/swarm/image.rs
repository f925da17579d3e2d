//! `fogline image build`: a worker image made here, from this very binary, without pulling
//! anything (`FROM scratch`, the binary, and the shared libraries it links).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

/// The label every image built here carries.
pub const LABEL: &str = "dev.fogline.image";

/// What `ldd` says `binary` loads: absolute paths of shared libraries (none when static).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd to list the binary's shared libraries")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", binary.display(), err.trim());
    }
    Ok(parse_ldd(&text))
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`); `linux-vdso` and the like have none.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The build context: a Dockerfile and `rootfs/` holding the binary at `/fogline`, the
/// libraries at their own paths, and an empty `/tmp`.
pub fn context(binary: &Path, libs: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nLABEL {LABEL}=\"{}\"\nENTRYPOINT [\"/fogline\"]\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "Dockerfile", dockerfile.as_bytes())?;
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_mode(0o1777);
    d.set_size(0);
    d.set_cksum();
    tar.append_data(&mut d, "rootfs/tmp/", std::io::empty())?;
    let mut add = |path: &Path, at: &str| -> anyhow::Result<()> {
        // Symlinks (lib64 → lib) are followed: the image holds the files themselves.
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, at, data.as_slice())?;
        Ok(())
    };
    add(binary, "rootfs/fogline")?;
    for lib in libs {
        let rel = lib.to_string_lossy();
        add(lib, &format!("rootfs{rel}"))?;
    }
    Ok(tar.into_inner()?)
}

/// Builds the image `tag` from `binary`; returns its id. Progress goes to `say`.
pub async fn build(
    docker: &Docker,
    binary: &Path,
    tag: &str,
    mut say: impl FnMut(&str),
) -> anyhow::Result<String> {
    let libs = shared_libraries(binary)?;
    say(&format!(
        "building {tag} from {} ({} shared librar{})",
        binary.display(),
        libs.len(),
        if libs.len() == 1 { "y" } else { "ies" }
    ));
    let body = context(binary, &libs)?;
    let labels: HashMap<&str, &str> = [(LABEL, env!("CARGO_PKG_VERSION"))].into();
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(body.into())));
    let mut id = None;
    while let Some(item) = stream.next().await {
        let info = item.context("the engine refused the build")?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            bail!("building {tag}: {e}");
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    let inspected = docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("the build said nothing wrong, but {tag} is not there"))?;
    Ok(id.or(inspected.id).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_to_copy() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5b5f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2c)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2d)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2a)\n";
        let libs = parse_ldd(text);
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn the_context_holds_the_binary_the_libraries_and_a_dockerfile() {
        let dir = std::env::temp_dir().join(format!("fogline-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let bin = dir.join("bin");
        let lib = dir.join("lib.so");
        std::fs::write(&bin, b"ELF?").unwrap_or_default();
        std::fs::write(&lib, b"LIB").unwrap_or_default();
        let tar = context(&bin, std::slice::from_ref(&lib)).unwrap_or_default();
        let mut names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .map(|e| {
                e.filter_map(|e| e.ok())
                    .filter_map(|e| e.path().ok().map(|p| p.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let lib_at = format!("rootfs{}", lib.display());
        let mut want = vec![
            "Dockerfile".to_string(),
            lib_at,
            "rootfs/fogline".to_string(),
            "rootfs/tmp/".to_string(),
        ];
        want.sort();
        assert_eq!(names, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
