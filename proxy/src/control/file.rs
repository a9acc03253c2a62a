//! The file source, weir's embedded default: a directory holding
//! `weir.yaml` and `policies/*.yaml`, polled for changes (hot reload).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::source::{Contribution, NodeConfig, Source};
use crate::config::{CONFIG_FILE, POLICY_DIR, WeirConfig};
use crate::policy::{PolicyError, document};

/// A config directory on disk.
#[derive(Clone, Debug)]
pub struct LocalSource {
    pub dir: PathBuf,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalSource { dir: dir.into() }
    }

    /// Read and parse everything. `Err` when weir.yaml itself is unusable;
    /// otherwise the node configuration, every document that parsed, and the
    /// errors of those that did not (so validation can report its own too).
    pub fn read(&self) -> Result<Contribution, Vec<PolicyError>> {
        let config_path = self.dir.join(CONFIG_FILE);
        let config_file = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            vec![PolicyError { file: config_file.clone(), object: None, field: None, message: e.to_string() }]
        })?;
        let config = WeirConfig::parse(&text).map_err(|message| {
            let (field, message) = split_field(&message);
            vec![PolicyError { file: config_file.clone(), object: None, field, message }]
        })?;
        let files = policy_files(&self.dir.join(POLICY_DIR)).into_iter().map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            (path.display().to_string(), text)
        });
        let document::LoadedDocuments { documents, errors } = document::load_files(files);
        let node = NodeConfig { config, dir: self.dir.clone(), file: config_file };
        Ok(Contribution { node: Some(node), documents, errors, ..Default::default() })
    }

    /// A cheap hash of what `read` would see: the config and policy files,
    /// and the size and mtime of files the config points at (certificates,
    /// filters), so that replacing one is a change too.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let config = std::fs::read_to_string(self.dir.join(CONFIG_FILE)).ok();
        config.hash(&mut hasher);
        if let Some(config) = config.as_deref().and_then(|text| WeirConfig::parse(text).ok()) {
            let referenced = config.filters.iter().filter_map(|f| f.path.clone()).chain(
                config.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| [t.cert.clone(), t.key.clone()]),
            );
            for path in referenced {
                let full = if path.is_absolute() { path } else { self.dir.join(path) };
                std::fs::metadata(&full).ok().map(|m| (m.len(), m.modified().ok())).hash(&mut hasher);
            }
        }
        for path in policy_files(&self.dir.join(POLICY_DIR)) {
            (path.display().to_string(), std::fs::read(&path).ok()).hash(&mut hasher);
        }
        hasher.finish()
    }
}

impl Source for LocalSource {
    fn name(&self) -> String {
        format!("files in {}", self.dir.display())
    }

    fn fingerprint(&self) -> u64 {
        LocalSource::fingerprint(self)
    }

    fn read(&self) -> Result<Contribution, Vec<PolicyError>> {
        LocalSource::read(self)
    }
}

/// `listeners[0].bind: invalid socket address` → (field, message)
fn split_field(message: &str) -> (Option<String>, String) {
    match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (Some(field.to_string()), rest.to_string()),
        _ => (None, message.to_string()),
    }
}

/// Policy files in a directory, sorted: `*.yaml`, `*.yml`, `*.json`; editor
/// droppings and hidden files are skipped.
pub fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !name.starts_with('.')
                && p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    files
}
