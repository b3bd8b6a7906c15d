//! The backend factory: one arm per backend. A backend that exists but was not compiled in
//! gives its own clear error.

use crate::config::{resolve_credential, BackendConfig, Env, ServerConfig};
use keyturn_backend::KeyBackend;
use std::collections::HashMap;
use std::sync::Arc;

/// Builds backends, sharing one instance between key sets with the same settings (the file
/// backend locks its directory, so it must be opened once).
#[derive(Default)]
pub struct Factory {
    built: Vec<(BackendConfig, Arc<dyn KeyBackend>)>,
}

fn not_compiled(kind: &str) -> String {
    format!(
        "this keyturn was built without the {kind} backend; rebuild with `cargo build --release --features {kind}`"
    )
}

impl Factory {
    /// The backend for `config`.
    pub async fn get(
        &mut self,
        config: &BackendConfig,
        server: &ServerConfig,
    ) -> Result<Arc<dyn KeyBackend>, String> {
        if let Some((_, backend)) = self.built.iter().find(|(c, _)| c == config) {
            return Ok(backend.clone());
        }
        let backend = build(config, server).await?;
        self.built.push((config.clone(), backend.clone()));
        Ok(backend)
    }

    /// Every backend built so far, by kind (for health checks).
    pub fn kinds(&self) -> HashMap<&'static str, usize> {
        let mut out = HashMap::new();
        for (_, b) in &self.built {
            *out.entry(b.kind()).or_default() += 1;
        }
        out
    }
}

async fn build(
    config: &BackendConfig,
    server: &ServerConfig,
) -> Result<Arc<dyn KeyBackend>, String> {
    let env = Env {
        credentials_directory: server.credentials_dir.clone(),
        ..Env::default()
    };
    match config {
        #[cfg(feature = "file")]
        BackendConfig::File { dir, kek_file } => {
            use keyturn_backend_file::{FileBackend, FileBackendConfig, KekSource};
            let dir = dir.clone().unwrap_or_else(|| server.data_dir.join("keys"));
            let kek = match kek_file {
                Some(path) => KekSource::Existing(resolve_credential(path, &env)),
                None => match &server.credentials_dir {
                    Some(creds) if creds.join("keyturn-kek").exists() => {
                        KekSource::Existing(creds.join("keyturn-kek"))
                    }
                    _ => KekSource::File(server.data_dir.join("kek")),
                },
            };
            let backend =
                FileBackend::open(&FileBackendConfig { dir, kek }).map_err(|e| e.to_string())?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "file"))]
        BackendConfig::File { .. } => Err(not_compiled("file")),
        BackendConfig::Vault { .. } => {
            let _ = &env;
            Err(not_compiled("vault"))
        }
        BackendConfig::Kms { .. } => Err(not_compiled("kms")),
    }
}
