//! The function model: what a function is, and which manifests a node accepts.
//!
//! A manifest arrives as JSON or TOML from a user, a stack file or the OpenFaaS API.
//! [`FunctionManifest::from_json`] and [`FunctionManifest::validate`] turn it into a
//! value the node can trust; every rejection names the field at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::units::{duration_str, ByteSize};

/// The manifest format this build writes and understands.
pub const MANIFEST_VERSION: u32 = 1;

/// One deployable function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionManifest {
    /// Manifest format version; only 1 exists.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Name used in URLs: lowercase letters, digits and `-`, 1 to 63 characters; in a
    /// namespace other than the default, `NAME.NAMESPACE` (see [`crate::access`]).
    pub name: String,
    /// Which sandbox runs it.
    #[serde(default)]
    pub runtime: Runtime,
    /// Content address of the Wasm module (runtime `wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Digest>,
    /// Container image (runtime `container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Most memory one instance may use.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Wall-clock limit of one invocation.
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// Most instances running at once on one node; further calls get 429.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Environment variables the function sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets of its namespace the function reads at `/var/openfaas/secrets/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Safe to run twice: may be retried elsewhere and sent as 0-RTT data.
    #[serde(default)]
    pub idempotent: bool,
    /// Free-form labels for routing and for people.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Host directories granted to the function. None by default: no filesystem at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// What the router weighs besides speed when it places this function.
    #[serde(default, skip_serializing_if = "Placement::is_default")]
    pub placement: Placement,
    /// How a container function runs (runtime `container`).
    #[serde(default, skip_serializing_if = "ContainerSpec::is_default")]
    pub container: ContainerSpec,
}

/// How a container function's process is run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerMode {
    /// One process per call: any command-line program works unchanged.
    #[default]
    Exec,
    /// A long-lived process reading length-prefixed requests on stdin and writing
    /// length-prefixed responses on stdout (4-byte big-endian length, then the bytes).
    Stream,
}

/// Container settings of a function; the memory limit and timeout are the manifest's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    #[serde(default)]
    pub mode: ContainerMode,
    /// Replaces the image's CMD: the arguments after its entrypoint (Docker's semantics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Stream mode: an idle instance is stopped after this long (scale to zero).
    #[serde(default = "default_keepalive", with = "duration_str")]
    pub keepalive: Duration,
    /// Stream mode: most instances of the function at once on one node.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// CPU limit in thousandths of a core.
    #[serde(default = "default_millicpus")]
    pub millicpus: u32,
    /// Most processes and threads inside the container (a fork bomb stops here).
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// Size of the writable /tmp (the root filesystem is read-only).
    #[serde(default = "default_tmpfs")]
    pub tmpfs: ByteSize,
}

pub(crate) fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_max_instances() -> u32 {
    4
}
fn default_millicpus() -> u32 {
    1000
}
fn default_pids() -> u32 {
    64
}
fn default_tmpfs() -> ByteSize {
    ByteSize::mib(16)
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            mode: ContainerMode::Exec,
            cmd: Vec::new(),
            keepalive: default_keepalive(),
            max_instances: default_max_instances(),
            millicpus: default_millicpus(),
            pids: default_pids(),
            tmpfs: default_tmpfs(),
        }
    }
}

impl ContainerSpec {
    pub fn is_default(&self) -> bool {
        *self == ContainerSpec::default()
    }
}

/// Placement preferences of one function (used by the router).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Latency the caller needs; places predicted to miss it are avoided when another can
    /// make it.
    #[serde(
        default,
        with = "crate::units::opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Duration>,
    /// Milliseconds a cloud placement must save to be chosen over a nearer one (cost).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cloud_cost_ms: u32,
    /// Milliseconds running on the device itself must save (battery).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_energy_ms: u32,
    /// Run only in this tier (OpenFaaS `constraints: ["tier==cloud"]`); with no live
    /// member of it the call fails at once, naming the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<crate::config::Tier>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Placement {
    pub fn is_default(&self) -> bool {
        *self == Placement::default()
    }
}

/// A host directory made visible inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Absolute path on the node.
    pub host: String,
    /// Path the function opens, e.g. `/data`.
    pub guest: String,
    /// Whether the function may only read.
    #[serde(default = "default_true")]
    pub read_only: bool,
}

/// The sandbox a function runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A WASI preview 1 command module run by wasmtime.
    #[default]
    Wasm,
    /// A container image run by the Docker engine.
    Container,
}

impl Runtime {
    /// Whether the function's code is a module that travels by hash (uploaded with the
    /// manifest, fetched by peers); otherwise the manifest names it (a container image).
    pub fn code_is_module(self) -> bool {
        match self {
            Runtime::Wasm => true,
            Runtime::Container => false,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Wasm => "wasm",
            Runtime::Container => "container",
        })
    }
}

/// What a node is willing to accept, from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLimits {
    pub max_memory: ByteSize,
    pub max_timeout: Duration,
    pub max_concurrency: u32,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            max_memory: ByteSize::mib(512),
            max_timeout: Duration::from_secs(300),
            max_concurrency: 10_000,
        }
    }
}

/// A manifest that was rejected, naming the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: field `{field}`: {problem}")]
pub struct ManifestError {
    pub field: String,
    pub problem: String,
}

impl ManifestError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ManifestError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl FunctionManifest {
    /// A wasm manifest with default limits.
    pub fn wasm(name: impl Into<String>, module: Digest) -> Self {
        FunctionManifest {
            version: MANIFEST_VERSION,
            name: name.into(),
            runtime: Runtime::Wasm,
            module: Some(module),
            image: None,
            memory: default_memory(),
            timeout: default_timeout(),
            max_concurrency: default_max_concurrency(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            idempotent: false,
            labels: BTreeMap::new(),
            dirs: Vec::new(),
            placement: Placement::default(),
            container: ContainerSpec::default(),
        }
    }

    /// Parses JSON, naming the field where parsing failed.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(document)".to_string()
            } else {
                field
            };
            ManifestError::new(field, e.into_inner().to_string())
        })
    }

    /// Checks every field against the node's limits.
    pub fn validate(&self, limits: &ManifestLimits) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::new(
                "version",
                format!(
                    "unsupported version {}; this build reads version {MANIFEST_VERSION}",
                    self.version
                ),
            ));
        }
        validate_key(&self.name)?;
        for s in &self.secrets {
            validate_secret_name(s).map_err(|e| ManifestError::new("secrets", e.problem))?;
        }
        match self.runtime {
            Runtime::Wasm => {
                if self.module.is_none() {
                    return Err(ManifestError::new(
                        "module",
                        "a wasm function needs a module digest",
                    ));
                }
            }
            Runtime::Container => match &self.image {
                None => {
                    return Err(ManifestError::new(
                        "image",
                        "a container function needs an image",
                    ))
                }
                Some(i) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => {
                    return Err(ManifestError::new(
                        "image",
                        format!("{i:?} is not an image reference"),
                    ))
                }
                Some(_) => {}
            },
        }
        if self.memory < ByteSize::mib(1) || self.memory > limits.max_memory {
            return Err(ManifestError::new(
                "memory",
                format!("{} is outside 1Mi..={}", self.memory, limits.max_memory),
            ));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > limits.max_timeout {
            return Err(ManifestError::new(
                "timeout",
                format!(
                    "{} is outside 1ms..={}",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(limits.max_timeout)
                ),
            ));
        }
        if self.max_concurrency == 0 || self.max_concurrency > limits.max_concurrency {
            return Err(ManifestError::new(
                "max_concurrency",
                format!(
                    "{} is outside 1..={}",
                    self.max_concurrency, limits.max_concurrency
                ),
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ManifestError::new(
                    format!("env.{k}"),
                    "names must be non-empty without '=' or NUL, values without NUL",
                ));
            }
        }
        for k in self.labels.keys() {
            if k.is_empty() || k.len() > 253 {
                return Err(ManifestError::new(
                    "labels",
                    format!("label key {k:?} must be 1 to 253 characters"),
                ));
            }
        }
        let c = &self.container;
        if !(1..=64).contains(&c.max_instances) {
            return Err(ManifestError::new(
                "container.max_instances",
                format!("{} is outside 1..=64", c.max_instances),
            ));
        }
        if !(10..=64_000).contains(&c.millicpus) {
            return Err(ManifestError::new(
                "container.millicpus",
                format!("{} is outside 10..=64000", c.millicpus),
            ));
        }
        if !(1..=32_768).contains(&c.pids) {
            return Err(ManifestError::new(
                "container.pids",
                format!("{} is outside 1..=32768", c.pids),
            ));
        }
        if c.tmpfs > ByteSize(1 << 30) {
            return Err(ManifestError::new(
                "container.tmpfs",
                format!("{} is above 1Gi", c.tmpfs),
            ));
        }
        if let Some(i) = c.cmd.iter().position(|a| a.contains('\0')) {
            return Err(ManifestError::new(
                format!("container.cmd[{i}]"),
                "contains NUL",
            ));
        }
        for (i, d) in self.dirs.iter().enumerate() {
            for (field, path) in [("host", &d.host), ("guest", &d.guest)] {
                if !path.starts_with('/') {
                    return Err(ManifestError::new(
                        format!("dirs[{i}].{field}"),
                        format!("{path:?} must be an absolute path"),
                    ));
                }
                if path.split('/').any(|seg| seg == "..") || path.contains('\0') {
                    return Err(ManifestError::new(
                        format!("dirs[{i}].{field}"),
                        format!("{path:?} must not contain `..`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Function names appear in URLs, metric labels and container names.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    if !crate::access::is_label(name) {
        return Err(ManifestError::new(
            "name",
            format!("{name:?} must be 1 to 63 lowercase letters, digits or '-', starting with a letter or digit and not ending with '-'"),
        ));
    }
    Ok(())
}

/// A function's key: `NAME` or `NAME.NAMESPACE`.
pub fn validate_key(key: &str) -> Result<(), ManifestError> {
    let (name, ns) = crate::access::split(key);
    validate_name(name)?;
    if key.contains('.') {
        crate::access::validate_namespace(ns)?;
        if ns == crate::access::DEFAULT_NAMESPACE {
            return Err(ManifestError::new(
                "name",
                format!("{key:?}: a function of the default namespace is named without it"),
            ));
        }
    }
    Ok(())
}

/// A secret's name: what a file may be called under `/var/openfaas/secrets/`.
pub fn validate_secret_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && !name.starts_with('.');
    if !ok {
        return Err(ManifestError::new(
            "name",
            format!("secret name {name:?} must be 1 to 253 lowercase letters, digits, '-', '_' or '.', not starting with '.'"),
        ));
    }
    Ok(())
}

fn default_version() -> u32 {
    MANIFEST_VERSION
}
fn default_memory() -> ByteSize {
    ByteSize::mib(64)
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_concurrency() -> u32 {
    32
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(b"module")
    }

    #[test]
    fn minimal_json_gets_defaults() {
        let json = format!(r#"{{"name":"hello","module":"{}"}}"#, digest());
        let m = FunctionManifest::from_json(json.as_bytes()).unwrap();
        m.validate(&ManifestLimits::default()).unwrap();
        assert_eq!(m.runtime, Runtime::Wasm);
        assert_eq!(m.memory, ByteSize::mib(64));
        assert_eq!(m.timeout, Duration::from_secs(5));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (r#"{"name":"a","module":"x"}"#.to_string(), "module"),
            (r#"{"name":"a","memory":"12Q"}"#.to_string(), "memory"),
            (r#"{"name":"a","timeout":"soon"}"#.to_string(), "timeout"),
            (r#"{"name":"a","colour":"red"}"#.to_string(), "colour"),
            (r#"{"name":"a","runtime":"jvm"}"#.to_string(), "runtime"),
            (r#"{"name":7}"#.to_string(), "name"),
        ];
        for (json, field) in cases {
            let e = FunctionManifest::from_json(json.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let limits = ManifestLimits::default();
        let base = FunctionManifest::wasm("ok", digest());
        type Mutation = Box<dyn Fn(&mut FunctionManifest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|m| m.name = "Bad_Name".into()), "name"),
            (Box::new(|m| m.name = String::new()), "name"),
            (Box::new(|m| m.name = "x".repeat(64)), "name"),
            (Box::new(|m| m.module = None), "module"),
            (Box::new(|m| m.memory = ByteSize(1000)), "memory"),
            (Box::new(|m| m.memory = ByteSize::mib(4096)), "memory"),
            (Box::new(|m| m.timeout = Duration::ZERO), "timeout"),
            (
                Box::new(|m| m.timeout = Duration::from_secs(3600)),
                "timeout",
            ),
            (Box::new(|m| m.max_concurrency = 0), "max_concurrency"),
            (
                Box::new(|m| {
                    m.env.insert("A=B".into(), "v".into());
                }),
                "env.A=B",
            ),
            (Box::new(|m| m.version = 2), "version"),
            (
                Box::new(|m| {
                    m.dirs.push(DirGrant {
                        host: "rel".into(),
                        guest: "/d".into(),
                        read_only: true,
                    })
                }),
                "dirs[0].host",
            ),
            (
                Box::new(|m| {
                    m.runtime = Runtime::Container;
                    m.image = None;
                }),
                "image",
            ),
        ];
        for (mutate, field) in cases {
            let mut m = base.clone();
            mutate(&mut m);
            let e = m.validate(&limits).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn manifests_round_trip_through_json() {
        let mut m = FunctionManifest::wasm("echo", digest());
        m.env.insert("GREETING".into(), "hi".into());
        m.idempotent = true;
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(FunctionManifest::from_json(&json).unwrap(), m);
    }
}
