//! Loading simulator scenarios and the files they name (the core simulator does no I/O):
//! for `fogline simulate` and for the dashboard's Simulator page, which may only read files
//! under one folder.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use fogline_core::sim::{self, Cdf, Inputs, Samples, Scenario, WorkloadData};

/// Files given instead of those the scenario names (the command line's).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub edge_rtt: Option<PathBuf>,
    pub cloud_rtt: Option<PathBuf>,
    pub trace: Option<PathBuf>,
}

/// Where a scenario's files may come from.
pub enum Files<'a> {
    /// Anywhere (the command line: the user's own files).
    Anywhere,
    /// Only under this folder (the dashboard: a scenario sent over HTTP names files).
    Under(&'a Path),
}

fn read(path: &Path, files: &Files<'_>) -> anyhow::Result<String> {
    if let Files::Under(root) = files {
        let real = path
            .canonicalize()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if !real.starts_with(root) {
            bail!(
                "{} is outside {}, where the dashboard's scenarios may read files",
                path.display(),
                root.display()
            );
        }
    }
    std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses a scenario (`name` names it in errors) and loads what it names, relative to
/// `base` (its folder).
pub fn load(
    name: &str,
    text: &str,
    base: &Path,
    overrides: &Overrides,
    files: &Files<'_>,
) -> anyhow::Result<(Scenario, Inputs)> {
    let s = Scenario::parse(name, text)?;
    let from_scenario = |p: &str| base.join(p);
    let samples = |path: PathBuf| -> anyhow::Result<Samples> {
        Ok(Samples::parse(
            &path.display().to_string(),
            &read(&path, files)?,
        )?)
    };
    let cdf = |path: PathBuf| -> anyhow::Result<Cdf> {
        Ok(Cdf::parse(
            &path.display().to_string(),
            &read(&path, files)?,
        )?)
    };
    let edge_rtt = samples(
        overrides
            .edge_rtt
            .clone()
            .unwrap_or_else(|| from_scenario(&s.edge_rtt)),
    )?;
    let cloud_rtt = samples(
        overrides
            .cloud_rtt
            .clone()
            .unwrap_or_else(|| from_scenario(&s.cloud_rtt)),
    )?;
    let trace = overrides
        .trace
        .clone()
        .or_else(|| s.workload.trace.as_deref().map(from_scenario));
    let workload = match trace {
        Some(path) => {
            let (calls, names) =
                sim::data::parse_trace(&path.display().to_string(), &read(&path, files)?)?;
            WorkloadData::Trace {
                calls,
                functions: names.len(),
            }
        }
        None => {
            let w = &s.workload;
            let need = |p: &Option<String>, key: &str| -> anyhow::Result<PathBuf> {
                p.as_deref()
                    .map(from_scenario)
                    .ok_or_else(|| anyhow!("{name}: `workload.{key}` is missing"))
            };
            WorkloadData::Azure {
                exec: cdf(need(&w.exec_cdf, "exec_cdf")?)?,
                popularity: cdf(need(&w.popularity_cdf, "popularity_cdf")?)?,
                cv: cdf(need(&w.cv_cdf, "cv_cdf")?)?,
            }
        }
    };
    Ok((
        s,
        Inputs {
            edge_rtt,
            cloud_rtt,
            workload,
        },
    ))
}

/// A scenario the dashboard offers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Offered {
    pub file: String,
    pub name: String,
    pub invocations: usize,
    /// Its leading comment: what it models and what makes it hard.
    pub about: String,
}

/// The scenarios in `dir` (`*.toml`), by file name.
pub fn offered(dir: &Path) -> Vec<Offered> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Offered> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            let s = Scenario::parse(&file, &text).ok()?;
            let about = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect::<Vec<_>>()
                .join(" ");
            Some(Offered {
                file,
                name: s.name.clone(),
                invocations: s.invocations,
                about,
            })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The dashboard's scenario folder: configured, else `configs/sim` here, else where the
/// package installs it.
pub fn scenario_dir(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    ["configs/sim", "/usr/share/fogline/configs/sim"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
}
