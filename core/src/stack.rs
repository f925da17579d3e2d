//! Stack files: several functions described in one TOML file for `fogline deploy -f`.
//!
//! ```toml
//! version = 1
//! [functions.hello]
//! wasm = "examples/hello/hello.wasm"   # relative to this file
//! timeout = "2s"
//! memory = "64Mi"
//! env = { GREETING = "hi" }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{duration_str, ByteSize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub version: u32,
    pub functions: BTreeMap<String, StackFunction>,
}

/// One function of a stack file: where its module is, and its manifest settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StackFunction {
    /// Path to the `.wasm` file, relative to the stack file.
    pub wasm: Option<String>,
    /// Container image, for container functions.
    pub image: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    pub memory: Option<ByteSize>,
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Placement preferences (deadline, cloud cost, device energy).
    #[serde(default)]
    pub placement: crate::manifest::Placement,
}

/// A stack file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: function {name:?}: give exactly one of `wasm` or `image`")]
    Source { file: String, name: String },
    #[error("{file}: unsupported version {version}; this build reads version 1")]
    Version { file: String, version: u32 },
}

impl StackFile {
    pub fn parse(file: &str, text: &str) -> Result<Self, StackError> {
        let stack: StackFile = toml::from_str(text).map_err(|e| StackError::Parse {
            file: file.to_string(),
            message: crate::config::toml_problem(text, &e),
        })?;
        if stack.version != 1 {
            return Err(StackError::Version {
                file: file.to_string(),
                version: stack.version,
            });
        }
        for (name, f) in &stack.functions {
            if f.wasm.is_some() == f.image.is_some() {
                return Err(StackError::Source {
                    file: file.to_string(),
                    name: name.clone(),
                });
            }
        }
        Ok(stack)
    }
}

mod opt_duration {
    use super::*;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "duration_str")] Duration);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_parses() {
        let s = StackFile::parse(
            "stack.toml",
            "version = 1\n[functions.hello]\nwasm = \"hello.wasm\"\ntimeout = \"2s\"\nmemory = \"32Mi\"\n[functions.p]\nwasm = \"p.wasm\"\n",
        )
        .unwrap();
        assert_eq!(s.functions.len(), 2);
        assert_eq!(s.functions["hello"].timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.functions["hello"].memory, Some(ByteSize::mib(32)));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = StackFile::parse(
            "s.toml",
            "version = 1\n[functions.a]\nwasm = \"a\"\ncolour = 1\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("s.toml:") && msg.contains("colour"),
            "{msg}"
        );
        let e = StackFile::parse("s.toml", "version = 1\n[functions.a]\n").unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = StackFile::parse(
            "s.toml",
            "version = 1\n[functions.a]\nwasm = \"a\"\ntimeout = \"soon\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
    }
}
