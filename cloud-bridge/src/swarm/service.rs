//! The workers' Swarm service: its spec (the worker command, the join token as a Swarm
//! secret, start-first updates, host networking), created or adopted, scaled, upgraded and
//! removed through the engine's API.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bollard::models::{
    Mount, MountType, NetworkAttachmentConfig, SecretSpec, Service, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
    TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, UpdateServiceOptionsBuilder,
};
use bollard::Docker;
use fogline_core::config::SwarmSection;

/// Marks the service and its secrets, with the bridge that owns them as its value.
pub const OWNER: &str = "dev.fogline.bridge";
/// The enrollment address the service's join token names (a rotated token when it moves).
pub const ENROLL: &str = "dev.fogline.enroll";
/// Where a task finds its join token.
pub const TOKEN_FILE: &str = "fogline-join";
/// How long a stopping worker has to say goodbye and finish its calls before Swarm kills it.
pub const STOP_GRACE_S: i64 = 30;

/// What a worker needs to start: a join token and where to listen.
#[derive(Debug, Clone)]
pub struct WorkerSpec<'a> {
    pub cfg: &'a SwarmSection,
    /// The bridge's member name.
    pub owner: &'a str,
    /// The enrollment address the token names.
    pub enroll: &'a str,
    pub secret_id: &'a str,
    pub secret_name: &'a str,
}

/// The service's spec for `replicas` workers.
pub fn spec(w: &WorkerSpec<'_>, replicas: u32) -> ServiceSpec {
    let cfg = w.cfg;
    let bind = cfg.bind;
    let host = |port: u16| std::net::SocketAddr::new(bind, port).to_string();
    let mesh_ip = match bind {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/0"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/0"),
    };
    let args = vec![
        "join".to_string(),
        "--token-file".into(),
        format!("/run/secrets/{TOKEN_FILE}"),
        "--tier".into(),
        "cloud".into(),
        "--data-dir".into(),
        "/data".into(),
        "--http".into(),
        host(0),
        "--quic".into(),
        host(0),
        "--mesh".into(),
        mesh_ip,
        "--no-mdns".into(),
    ];
    let labels: HashMap<String, String> = [
        (OWNER.to_string(), w.owner.to_string()),
        (ENROLL.to_string(), w.enroll.to_string()),
    ]
    .into();
    let mounts = cfg.docker_socket.as_ref().map(|s| {
        vec![Mount {
            target: Some("/var/run/docker.sock".into()),
            source: Some(s.display().to_string()),
            typ: Some(MountType::BIND),
            ..Default::default()
        }]
    });
    ServiceSpec {
        name: Some(cfg.service.clone()),
        labels: Some(labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(cfg.image.clone()),
                args: Some(args),
                // A member name is letters, digits and '-': SERVICE-SLOT-TASKID.
                env: Some(vec![
                    "FOGLINE_ID={{.Service.Name}}-{{.Task.Slot}}-{{.Task.ID}}".to_string(),
                    "FOGLINE_SWARM_SERVICE={{.Service.Name}}".to_string(),
                    "RUST_LOG=info".to_string(),
                ]),
                labels: Some(labels),
                secrets: Some(vec![TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: Some(TOKEN_FILE.into()),
                        uid: Some("0".into()),
                        gid: Some("0".into()),
                        mode: Some(0o400),
                    }),
                    secret_id: Some(w.secret_id.to_string()),
                    secret_name: Some(w.secret_name.to_string()),
                }]),
                mounts,
                stop_grace_period: Some(STOP_GRACE_S * 1_000_000_000),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(200_000_000),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(cfg.network.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(replicas)),
            }),
            ..Default::default()
        }),
        // A new worker starts before an old one stops: no moment with fewer workers.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(2_000_000_000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether the engine is a Swarm manager: `Ok(None)` yes, `Ok(Some(why))` no.
pub async fn manager(docker: &Docker) -> anyhow::Result<Option<String>> {
    let info = docker
        .info()
        .await
        .context("cannot reach the Docker engine")?;
    let swarm = info.swarm.unwrap_or_default();
    let state = swarm
        .local_node_state
        .map(|s| s.to_string())
        .unwrap_or_default();
    if state != "active" {
        return Ok(Some(format!(
            "the Docker engine is not in swarm mode (state {:?}; `docker swarm init` makes it a manager)",
            if state.is_empty() { "inactive" } else { &state }
        )));
    }
    if swarm.control_available != Some(true) {
        return Ok(Some(
            "the Docker engine is a swarm worker, not a manager: run the bridge on a manager"
                .into(),
        ));
    }
    Ok(None)
}

/// The service named `name`, if it exists.
pub async fn find(docker: &Docker, name: &str) -> anyhow::Result<Option<Service>> {
    let filters: HashMap<&str, Vec<&str>> = [("name", vec![name])].into();
    let list = docker
        .list_services(Some(
            ListServicesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .context("cannot list Swarm services")?;
    // `name` filters by prefix: the exact one only.
    Ok(list
        .into_iter()
        .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name)))
}

/// The service's replicas as its spec says.
pub fn replicas(s: &Service) -> u32 {
    s.spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// The label `key` of the service.
pub fn label<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.spec
        .as_ref()?
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Stores `token` as a new Swarm secret for `service`; returns its id and name.
pub async fn new_secret(
    docker: &Docker,
    service: &str,
    owner: &str,
    token: &str,
) -> anyhow::Result<(String, String)> {
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let name = format!("{service}-join-{}", hex::encode(nonce));
    let labels: HashMap<String, String> = [(OWNER.to_string(), owner.to_string())].into();
    let id = docker
        .create_secret(SecretSpec {
            name: Some(name.clone()),
            labels: Some(labels),
            data: Some(bollard_base64(token.as_bytes())),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the Swarm secret {name}"))?
        .id;
    Ok((id, name))
}

/// Base64 (standard alphabet) as the secrets API takes data.
fn bollard_base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Secrets labelled as `owner`'s for `service`, but not the one in use (`keep`).
pub async fn stale_secrets(
    docker: &Docker,
    service: &str,
    owner: &str,
    keep: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let label = format!("{OWNER}={owner}");
    let filters: HashMap<&str, Vec<&str>> = [("label", vec![label.as_str()])].into();
    let list = docker
        .list_secrets(Some(
            ListSecretsOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .context("cannot list Swarm secrets")?;
    let prefix = format!("{service}-join-");
    Ok(list
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.name.as_deref())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|s| s.id)
        .filter(|id| Some(id.as_str()) != keep)
        .collect())
}

/// Changes the service with `edit` on its current spec (retried once if another writer
/// changed it in between).
pub async fn update(
    docker: &Docker,
    name: &str,
    mut edit: impl FnMut(&mut ServiceSpec),
) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let current = docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .with_context(|| format!("cannot read the service {name}"))?;
        let version = current.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = current.spec.unwrap_or_default();
        edit(&mut spec);
        let opts = UpdateServiceOptionsBuilder::default()
            .version(version.min(i32::MAX as u64) as i32)
            .build();
        match docker.update_service(name, spec, opts, None).await {
            Ok(r) => {
                for w in r.warnings.unwrap_or_default() {
                    tracing::warn!(service = %name, "swarm: {w}");
                }
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "cannot update the service {name}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Sets the service's replicas.
pub async fn scale(docker: &Docker, name: &str, replicas: u32) -> anyhow::Result<()> {
    update(docker, name, |spec| {
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(replicas)),
            }),
            ..Default::default()
        });
    })
    .await
}

/// The service's tasks Swarm means to run (starting, running, or failed to start).
pub async fn tasks(docker: &Docker, name: &str) -> anyhow::Result<Vec<bollard::models::Task>> {
    let filters: HashMap<&str, Vec<&str>> =
        [("service", vec![name]), ("desired-state", vec!["running"])].into();
    docker
        .list_tasks(Some(
            ListTasksOptionsBuilder::default().filters(&filters).build(),
        ))
        .await
        .with_context(|| format!("cannot list the tasks of {name}"))
}

/// Tasks of the service Swarm reports running now.
pub async fn running(docker: &Docker, name: &str) -> anyhow::Result<u32> {
    Ok(running_of(&tasks(docker, name).await?))
}

/// How many of `tasks` Swarm reports running.
pub fn running_of(tasks: &[bollard::models::Task]) -> u32 {
    tasks
        .iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .count() as u32
}

/// The workers' image replaced by `image`, one at a time, start-first; waits until Swarm
/// says the update completed (or failed, with its message).
pub async fn upgrade(
    docker: &Docker,
    name: &str,
    image: &str,
    mut say: impl FnMut(&str),
) -> anyhow::Result<()> {
    let Some(current) = find(docker, name).await? else {
        bail!("no Swarm service named {name}: start the bridge with --swarm first");
    };
    if label(&current, OWNER).is_none() {
        bail!("the service {name} is not a Fogline bridge's (no {OWNER} label)");
    }
    docker.inspect_image(image).await.with_context(|| {
        format!("no image {image} on this engine (`fogline image build --tag {image}`)")
    })?;
    update(docker, name, |spec| {
        if let Some(c) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
        {
            c.image = Some(image.to_string());
        }
    })
    .await?;
    say(&format!(
        "updating {name} to {image}, one worker at a time (start-first)"
    ));
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let s = docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .with_context(|| format!("cannot read the service {name}"))?;
        use bollard::models::ServiceUpdateStatusStateEnum as U;
        if let Some(st) = &s.update_status {
            if matches!(
                st.state,
                Some(U::ROLLBACK_STARTED | U::ROLLBACK_COMPLETED | U::ROLLBACK_PAUSED | U::PAUSED)
            ) {
                bail!(
                    "the update of {name} stopped: {}",
                    st.message.clone().unwrap_or_else(|| "no message".into())
                );
            }
        }
        // Done when every task meant to run runs the new image, as many as the replicas
        // (the autoscaler may change them meanwhile, which resets Swarm's update status).
        let tasks = tasks(docker, name).await?;
        let image_of = |t: &bollard::models::Task| {
            t.spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default()
        };
        let new = |t: &bollard::models::Task| {
            let i = image_of(t);
            i == image || i.starts_with(&format!("{image}@"))
        };
        let running_new = tasks
            .iter()
            .filter(|t| new(t))
            .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
            .count() as u32;
        let old = tasks.iter().filter(|t| !new(t)).count();
        if old == 0 && running_new >= replicas(&s) {
            say(&format!(
                "updated {name} to {image} in {:.1} s ({running_new} workers)",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            bail!("the update of {name} did not complete within 10 minutes");
        }
    }
}

/// Removes function containers (on this engine) left by the service's workers that Swarm
/// no longer runs (`live`: the ids of the tasks it means to run): a killed worker cannot
/// remove its own. Returns how many.
pub async fn sweep_functions(
    docker: &Docker,
    name: &str,
    live: &[String],
) -> anyhow::Result<usize> {
    fogline_node::executor::container::remove_swarm_leftovers(docker, name, None, |_, task| {
        live.iter().any(|t| t == task)
    })
    .await
    .context("cannot list containers")
}

/// Removes the service and its secrets (a bridge's workers stop with a goodbye each).
pub async fn remove(docker: &Docker, name: &str) -> anyhow::Result<bool> {
    let Some(s) = find(docker, name).await? else {
        return Ok(false);
    };
    let Some(owner) = label(&s, OWNER).map(str::to_string) else {
        bail!("the service {name} is not a Fogline bridge's (no {OWNER} label); not removed");
    };
    docker
        .delete_service(name)
        .await
        .with_context(|| format!("cannot remove the service {name}"))?;
    // The workers stop (each removing its own function containers); then what is left
    // by any that could not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let label = format!("com.docker.swarm.service.name={name}");
    let filters: HashMap<&str, Vec<&str>> = [("label", vec![label.as_str()])].into();
    while std::time::Instant::now() < deadline {
        let left = docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map(|l| l.len())
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let _ = sweep_functions(docker, name, &[]).await;
    // Secrets in use by a task still stopping cannot go yet: retry for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = stale_secrets(docker, name, &owner, None).await?;
        let mut busy = 0;
        for id in &left {
            if docker.delete_secret(id).await.is_err() {
                busy += 1;
            }
        }
        if busy == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(bollard_base64(b""), "");
        assert_eq!(bollard_base64(b"f"), "Zg==");
        assert_eq!(bollard_base64(b"fo"), "Zm8=");
        assert_eq!(bollard_base64(b"foo"), "Zm9v");
        assert_eq!(bollard_base64(b"fogjoin_x?"), "Zm9nam9pbl94Pw==");
    }

    #[test]
    fn the_spec_passes_the_token_as_a_secret_and_updates_start_first() {
        let cfg = SwarmSection::default();
        let w = WorkerSpec {
            cfg: &cfg,
            owner: "cloud",
            enroll: "127.0.0.1:4435",
            secret_id: "sid",
            secret_name: "fogline-workers-join-00",
        };
        let s = spec(&w, 2);
        assert_eq!(s.name.as_deref(), Some("fogline-workers"));
        let c = s
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.clone())
            .unwrap_or_default();
        let args = c.args.unwrap_or_default().join(" ");
        assert!(
            args.contains("--token-file /run/secrets/fogline-join"),
            "{args}"
        );
        assert!(args.contains("--quic 127.0.0.1:0"), "{args}");
        // The token is never in the environment or the arguments.
        let env = c.env.unwrap_or_default().join(" ");
        assert!(!env.contains("fogjoin_") && !args.contains("fogjoin_"));
        assert_eq!(c.secrets.map(|s| s.len()), Some(1));
        assert_eq!(
            s.update_config.and_then(|u| u.order),
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(
            s.mode.and_then(|m| m.replicated).and_then(|r| r.replicas),
            Some(2)
        );
    }
}
