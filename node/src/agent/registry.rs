//! The function registry: what is deployed on this member, in memory (the store keeps it
//! across restarts).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fogline_core::FunctionManifest;

use super::admission::Admission;

/// A function the node can run now.
#[derive(Debug)]
pub struct Deployed {
    pub manifest: FunctionManifest,
    pub created_at: String,
    /// How many of its calls may run at once, and how many do.
    pub admission: Admission,
}

impl Deployed {
    pub fn new(manifest: FunctionManifest, created_at: String) -> Deployed {
        Deployed {
            admission: Admission::new(manifest.max_concurrency),
            manifest,
            created_at,
        }
    }
}

/// Deployed functions by name.
#[derive(Debug, Default)]
pub struct Functions {
    by_name: RwLock<HashMap<String, Arc<Deployed>>>,
}

impl Functions {
    pub fn get(&self, name: &str) -> Option<Arc<Deployed>> {
        self.read().get(name).cloned()
    }

    /// Every function, by name.
    pub fn list(&self) -> Vec<Arc<Deployed>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a function; returns the one it replaced.
    pub fn insert(&self, f: Deployed) -> Option<Arc<Deployed>> {
        self.write().insert(f.manifest.name.clone(), Arc::new(f))
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Deployed>> {
        self.write().remove(name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Deployed>>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Deployed>>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }
}
