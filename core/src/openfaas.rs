//! The OpenFaaS gateway's JSON shapes (shared/specs/openfaas-gateway.openapi.yml) and how
//! they map onto Fogline manifests, so existing OpenFaaS clients can deploy and list functions.
//!
//! An OpenFaaS `image` names a container image. Fogline also accepts a module digest there
//! (`sha256:…`, from `PUT /v1/modules`), which deploys a Wasm function. Settings OpenFaaS has
//! no field for travel as annotations under `fogline.dev/`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::manifest::{FunctionManifest, ManifestError, Runtime, MANIFEST_VERSION};
use crate::units::{parse_duration, ByteSize};
#[cfg(test)]
use std::time::Duration;

/// The default namespace; OpenFaaS clients send it when they name none.
pub const NAMESPACE: &str = crate::access::DEFAULT_NAMESPACE;

pub const ANN_TIMEOUT: &str = "fogline.dev/timeout";
pub const ANN_MAX_CONCURRENCY: &str = "fogline.dev/max-concurrency";
pub const ANN_IDEMPOTENT: &str = "fogline.dev/idempotent";

/// `POST`/`PUT /system/functions` body. Unknown and deprecated OpenFaaS fields are accepted and
/// ignored, as the OpenFaaS providers do.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    pub image: String,
    #[serde(default, deserialize_with = "non_null")]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub limits: Option<FunctionResources>,
    #[serde(default, deserialize_with = "non_null")]
    pub secrets: Option<Vec<String>>,
    /// Placement constraints of Swarm-style providers: `tier==cloud` (or `tier=cloud`,
    /// `fogline.tier==cloud`) pins the function to a tier; others are accepted and
    /// ignored, but they must be a list when given.
    #[serde(default, deserialize_with = "non_null", skip_serializing)]
    pub constraints: Option<Vec<String>>,
}

/// For fields the gateway spec does not mark nullable: absent is fine, `null` is an error.
pub fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FunctionResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// `DELETE /system/functions` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    pub function_name: String,
}

/// One entry of `GET /system/functions`, and `GET /system/function/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub image: String,
    pub namespace: String,
    pub env_vars: BTreeMap<String, String>,
    /// Names of the secrets it reads (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub limits: FunctionResources,
    pub invocation_count: u64,
    pub replicas: u64,
    pub available_replicas: u64,
    pub created_at: String,
}

/// `GET /system/info`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct GatewayInfo {
    pub provider: ProviderInfo,
    pub version: VersionInfo,
    pub arch: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProviderInfo {
    pub provider: String,
    pub orchestration: String,
    pub version: VersionInfo,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VersionInfo {
    pub sha: String,
    pub release: String,
}

/// One line of `GET /system/logs` (newline-delimited JSON).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LogEntry {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    pub timestamp: String,
    pub text: String,
}

/// The namespace a request names: none or empty is the default.
pub fn namespace_of(ns: Option<&str>) -> Result<&str, ManifestError> {
    match ns.filter(|n| !n.is_empty()) {
        None => Ok(NAMESPACE),
        Some(n) => crate::access::validate_namespace(n).map(|()| n),
    }
}

impl FunctionDeployment {
    /// Maps the OpenFaaS request onto a manifest. The result still needs
    /// [`FunctionManifest::validate`].
    pub fn to_manifest(&self) -> Result<FunctionManifest, ManifestError> {
        let key = crate::access::qualify(&self.service, self.namespace.as_deref()).map_err(
            |e| match e.field.as_str() {
                "name" => ManifestError::new("service", e.problem),
                _ => e,
            },
        )?;
        let (runtime, module, image) = if self.image.starts_with("sha256:") {
            let d: Digest = self
                .image
                .parse()
                .map_err(|e: crate::digest::DigestError| {
                    ManifestError::new("image", e.to_string())
                })?;
            (Runtime::Wasm, Some(d), None)
        } else {
            (Runtime::Container, None, Some(self.image.clone()))
        };
        let mut m = FunctionManifest {
            version: MANIFEST_VERSION,
            name: key.clone(),
            runtime,
            module,
            image,
            ..FunctionManifest::wasm(key, Digest([0; 32]))
        };
        if let Some(secrets) = &self.secrets {
            m.secrets = secrets.clone();
        }
        if let Some(env) = &self.env_vars {
            m.env = env.clone();
        }
        if let Some(labels) = &self.labels {
            m.labels = labels.clone();
        }
        if let Some(mem) = self.limits.as_ref().and_then(|l| l.memory.as_deref()) {
            m.memory = mem
                .parse::<ByteSize>()
                .map_err(|e| ManifestError::new("limits.memory", e.to_string()))?;
        }
        m.placement.tier = pinned_tier(self.constraints.iter().flatten(), false)?;
        let ann = self.annotations.clone().unwrap_or_default();
        if let Some(t) = ann.get(ANN_TIMEOUT) {
            m.timeout = parse_duration(t)
                .map_err(|e| ManifestError::new(format!("annotations.{ANN_TIMEOUT}"), e))?;
        }
        if let Some(c) = ann.get(ANN_MAX_CONCURRENCY) {
            m.max_concurrency = c.trim().parse().map_err(|_| {
                ManifestError::new(
                    format!("annotations.{ANN_MAX_CONCURRENCY}"),
                    format!("{c:?} is not a whole number"),
                )
            })?;
        }
        if let Some(i) = ann.get(ANN_IDEMPOTENT) {
            m.idempotent = match i.trim() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ManifestError::new(
                        format!("annotations.{ANN_IDEMPOTENT}"),
                        format!("{other:?} is not true or false"),
                    ))
                }
            };
        }
        Ok(m)
    }
}

/// The tier `constraints` pin a function to, if any; constraints about anything else are
/// ignored, or refused with `only_tiers` (Fogline's own CLI, where they would mean nothing).
pub fn pinned_tier<'a>(
    constraints: impl IntoIterator<Item = &'a String>,
    only_tiers: bool,
) -> Result<Option<crate::config::Tier>, ManifestError> {
    let mut pinned = None;
    for c in constraints {
        match tier_constraint(c)? {
            Some(t) if pinned.is_some_and(|p| p != t) => {
                return Err(ManifestError::new(
                    "constraints",
                    "two tier constraints disagree; a function runs in one tier",
                ))
            }
            Some(t) => pinned = Some(t),
            None if only_tiers => {
                return Err(ManifestError::new(
                    "constraints",
                    format!("{c:?}: Fogline places by tier only (tier==device, edge or cloud)"),
                ))
            }
            None => {}
        }
    }
    Ok(pinned)
}

/// The tier a constraint pins (`tier==cloud`, `tier=cloud`, `fogline.tier==cloud`), none
/// for other constraints, an error for a tier that does not exist.
fn tier_constraint(c: &str) -> Result<Option<crate::config::Tier>, ManifestError> {
    use crate::config::Tier;
    let c: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
    let Some(value) = ["tier==", "tier=", "fogline.tier=="]
        .iter()
        .find_map(|p| c.strip_prefix(p))
    else {
        return Ok(None);
    };
    match value {
        "device" => Ok(Some(Tier::Device)),
        "edge" => Ok(Some(Tier::Edge)),
        "cloud" => Ok(Some(Tier::Cloud)),
        "federated" => Ok(Some(Tier::Federated)),
        other => Err(ManifestError::new(
            "constraints",
            format!("tier {other:?}: a tier is device, edge, cloud or federated"),
        )),
    }
}

impl FunctionStatus {
    /// Describes a deployed function the way OpenFaaS clients expect.
    pub fn from_manifest(
        m: &FunctionManifest,
        invocation_count: u64,
        available: bool,
        created_at: String,
    ) -> Self {
        let image = match m.runtime {
            Runtime::Wasm => m.module.map(|d| d.to_string()).unwrap_or_default(),
            Runtime::Container => m.image.clone().unwrap_or_default(),
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANN_TIMEOUT.to_string(),
            humantime::format_duration(m.timeout).to_string(),
        );
        annotations.insert(
            ANN_MAX_CONCURRENCY.to_string(),
            m.max_concurrency.to_string(),
        );
        annotations.insert(ANN_IDEMPOTENT.to_string(), m.idempotent.to_string());
        annotations.insert("fogline.dev/runtime".to_string(), m.runtime.to_string());
        let (name, namespace) = crate::access::split(&m.name);
        FunctionStatus {
            name: name.to_string(),
            image,
            namespace: namespace.to_string(),
            // Names only: values (often credentials) never leave the node.
            env_vars: m.env.keys().map(|k| (k.clone(), String::new())).collect(),
            secrets: m.secrets.clone(),
            labels: m.labels.clone(),
            annotations,
            limits: FunctionResources {
                memory: Some(m.memory.to_string()),
                cpu: None,
            },
            invocation_count,
            // A Wasm function is instantiated per call: it is always ready, never "running".
            replicas: 1,
            available_replicas: u64::from(available),
            created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestLimits;

    #[test]
    fn a_tier_constraint_pins_the_function() {
        use crate::config::Tier;
        let dep = |c: &str| {
            serde_json::from_str::<FunctionDeployment>(&format!(
                r#"{{"service":"f","image":"sha256:{}","constraints":{c}}}"#,
                "ab".repeat(32)
            ))
            .unwrap()
            .to_manifest()
        };
        assert_eq!(
            dep(r#"["tier==cloud"]"#).unwrap().placement.tier,
            Some(Tier::Cloud)
        );
        assert_eq!(
            dep(r#"["tier = edge"]"#).unwrap().placement.tier,
            Some(Tier::Edge)
        );
        assert_eq!(
            dep(r#"["node.role==manager"]"#).unwrap().placement.tier,
            None
        );
        let e = dep(r#"["tier==moon"]"#).unwrap_err().to_string();
        assert!(e.contains("constraints") && e.contains("moon"), "{e}");
        assert!(dep(r#"["tier==edge","tier==cloud"]"#).is_err());
    }

    #[test]
    fn null_where_the_spec_allows_none_is_refused() {
        for field in ["secrets", "envVars", "namespace", "constraints"] {
            let body = format!(r#"{{"service":"f","image":"i","{field}":null}}"#);
            assert!(
                serde_json::from_str::<FunctionDeployment>(&body).is_err(),
                "{field}: null accepted"
            );
        }
        let ok = r#"{"service":"f","image":"i","labels":null,"annotations":null,"limits":null}"#;
        assert!(serde_json::from_str::<FunctionDeployment>(ok).is_ok());
    }

    #[test]
    fn wasm_deployment_maps_onto_a_manifest() {
        let d = Digest::of(b"m");
        let json = format!(
            r#"{{"service":"echo","image":"{d}","envVars":{{"A":"1"}},"limits":{{"memory":"32Mi"}},
                "annotations":{{"fogline.dev/timeout":"750ms","fogline.dev/idempotent":"true"}},
                "network":"func_functions","registryAuth":"x"}}"#
        );
        let dep: FunctionDeployment = serde_json::from_str(&json).unwrap();
        let m = dep.to_manifest().unwrap();
        m.validate(&ManifestLimits::default()).unwrap();
        assert_eq!(m.module, Some(d));
        assert_eq!(m.memory, ByteSize::mib(32));
        assert_eq!(m.timeout, Duration::from_millis(750));
        assert!(m.idempotent);
        assert_eq!(m.env["A"], "1");
    }

    #[test]
    fn image_names_select_the_container_runtime() {
        let dep = FunctionDeployment {
            service: "thumb".into(),
            image: "thumbnail:latest".into(),
            ..Default::default()
        };
        let m = dep.to_manifest().unwrap();
        assert_eq!(m.runtime, Runtime::Container);
        assert_eq!(m.image.as_deref(), Some("thumbnail:latest"));
    }

    #[test]
    fn bad_fields_are_named() {
        let base = FunctionDeployment {
            service: "f".into(),
            image: Digest::of(b"x").to_string(),
            ..Default::default()
        };
        let mut a = base.clone();
        a.namespace = Some("Other".into());
        assert_eq!(a.to_manifest().unwrap_err().field, "namespace");
        a.namespace = Some("team-a".into());
        assert_eq!(a.to_manifest().unwrap().name, "f.team-a");
        let mut b = base.clone();
        b.limits = Some(FunctionResources {
            memory: Some("lots".into()),
            cpu: None,
        });
        assert_eq!(b.to_manifest().unwrap_err().field, "limits.memory");
        let mut c = base.clone();
        c.image = "sha256:nothex".into();
        assert_eq!(c.to_manifest().unwrap_err().field, "image");
        let mut e = base;
        e.annotations = Some([(ANN_IDEMPOTENT.to_string(), "maybe".to_string())].into());
        assert!(e.to_manifest().unwrap_err().field.contains("idempotent"));
    }

    #[test]
    fn status_round_trips_the_settings() {
        let m = FunctionManifest::wasm("echo", Digest::of(b"m"));
        let s = FunctionStatus::from_manifest(&m, 3, true, "2026-01-01T00:00:00Z".into());
        let dep = FunctionDeployment {
            service: s.name.clone(),
            image: s.image.clone(),
            namespace: Some(s.namespace.clone()),
            env_vars: Some(s.env_vars.clone()),
            labels: Some(s.labels.clone()),
            annotations: Some(s.annotations.clone()),
            limits: Some(s.limits.clone()),
            secrets: None,
            constraints: None,
        };
        assert_eq!(dep.to_manifest().unwrap(), m);
    }
}
