//! `astroflight check --config FILE`: validate a configuration and reach everything it names,
//! without serving and without writing anything (the index is not opened).
//!
//! Checked: the TLS certificate, key and client CA load and match; the tokens, users and
//! session key load; the index directory is writable (or can be created); every dataset root
//! answers a listing (an HTTP root: its file list); the OTLP collector accepts a connection.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// How long one reachability check may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.what, self.detail)
    }
}

fn finding(what: impl Into<String>, r: Result<String, String>) -> Finding {
    let (ok, detail) = match r {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Finding {
        ok,
        what: what.into(),
        detail,
    }
}

/// A parsed configuration as JSON, paths resolved, for tools that check deployments (no
/// secret: dataset credentials are left out).
pub fn summary(c: &Config) -> serde_json::Value {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    serde_json::json!({
        "listen": c.listen,
        "health_listen": c.health_listen,
        "index_dir": c.index_dir.display().to_string(),
        "tls": c.tls.as_ref().map(|t| serde_json::json!({
            "cert": t.cert.display().to_string(), "key": t.key.display().to_string(),
            "client_ca": path(&t.client_ca),
        })),
        "auth": c.auth.as_ref().map(|a| serde_json::json!({
            "tokens_file": path(&a.tokens_file), "users_file": path(&a.users_file),
            "session_key_file": path(&a.session_key_file),
        })),
        "grants": c.grants.iter().map(|g| serde_json::json!({"identity": g.identity, "datasets": g.datasets})).collect::<Vec<_>>(),
        "datasets": c.datasets.iter().map(|d| serde_json::json!({"name": d.name, "kind": d.kind.name(), "root": d.root, "index_root": d.index_root})).collect::<Vec<_>>(),
        "index_role": c.index_role.name(),
        "advertise": c.advertise,
        "reindex_interval_secs": c.reindex_interval(),
        "index_retain_secs": c.index_retain_secs,
        "telemetry": {"otlp_endpoint": c.telemetry.otlp_endpoint, "prometheus_listen": c.telemetry.prometheus_listen},
        "log_format": if c.log_format == crate::config::LogFormat::Json { "json" } else { "text" },
        "shutdown_grace_secs": c.shutdown_grace_secs,
        "memory": {
            "max_memory_bytes": c.memory().budget, "max_request_memory_bytes": c.memory().request,
            "max_value_bytes": c.memory().value, "max_expression_batch_bytes": c.memory().batch,
            "sql_memory_bytes": c.memory().sql_pool,
        },
    })
}

/// Run every check of a parsed (hence valid) configuration.
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut out = vec![finding(
        "configuration",
        Ok(format!(
            "{} datasets, {} grants, tls {}, auth {}",
            config.datasets.len(),
            config.grants.len(),
            if config.tls.is_some() { "on" } else { "off" },
            if config.auth.is_some() { "on" } else { "off (open)" }
        )),
    )];
    let m = config.memory();
    out.push(finding(
        "memory",
        Ok(format!(
            "budget {} ({}), {} per request, {} per value, {} per expression batch; the machine (or cgroup) has {}",
            crate::memory::human(m.budget),
            if config.max_memory_bytes.is_some() {
                "max_memory_bytes"
            } else {
                "70% of the machine's"
            },
            crate::memory::human(m.request),
            crate::memory::human(m.value),
            crate::memory::human(m.batch),
            crate::memory::machine_memory().map_or("unknown memory".to_string(), crate::memory::human),
        )),
    ));
    if let Some(t) = &config.tls {
        out.push(finding(
            "tls",
            crate::tls::server_config(t)
                .map(|_| {
                    format!(
                        "certificate {} and key load{}",
                        t.cert.display(),
                        if t.client_ca.is_some() {
                            "; client certificates required (mutual TLS)"
                        } else {
                            ""
                        }
                    )
                })
                .map_err(|e| e.to_string()),
        ));
    }
    if config.auth.is_some() {
        out.push(finding(
            "auth",
            crate::auth::Security::new(config)
                .map(|_| "tokens, users and session key load".to_string())
                .map_err(|e| e.to_string()),
        ));
    }
    out.push(finding("index_dir", index_dir_writable(&config.index_dir)));
    for d in &config.datasets {
        let what = format!("dataset {}", d.name);
        let reached = async {
            let opened = crate::storage::open_dataset(d).map_err(|e| e.to_string())?;
            let listing = tokio::time::timeout(REACH_TIMEOUT, opened.store.list_with_delimiter(None))
                .await
                .map_err(|_| format!("no answer within {} s", REACH_TIMEOUT.as_secs()))?
                .map_err(|e| format!("cannot list the root: {e}"))?;
            Ok(format!(
                "{} root reachable ({} entries at its top)",
                opened.backend.name(),
                listing.objects.len() + listing.common_prefixes.len()
            ))
        };
        out.push(finding(what, reached.await));
        if let Some(r) = &d.index_root {
            out.push(finding(format!("dataset {} index_root", d.name), published(d, r).await));
        }
    }
    if let Some(e) = &config.telemetry.otlp_endpoint {
        out.push(finding("telemetry.otlp_endpoint", reach_tcp(e).await));
    }
    out
}

/// What a dataset's `index_root` holds: the newest published generation, or nothing yet.
/// Reads `latest.json` only (nothing is written, even on a builder).
async fn published(d: &crate::config::DatasetConfig, root: &str) -> Result<String, String> {
    let local = !root.contains("://") || root.starts_with("file://");
    if local && !Path::new(root.trim_start_matches("file://")).exists() {
        return Ok(format!("{root} does not exist yet: the builder creates it"));
    }
    let opened = crate::storage::open_index_root(d, root, false).map_err(|e| e.to_string())?;
    let latest = tokio::time::timeout(REACH_TIMEOUT, astroflight_index::publish::latest(opened.store.as_ref()))
        .await
        .map_err(|_| format!("no answer within {} s", REACH_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    Ok(match latest {
        Some(m) => format!(
            "{} root reachable; generation {} of lineage {} published, {} segments, {} alerts",
            opened.backend.name(),
            m.generation,
            m.lineage,
            m.segments.len(),
            m.segments.iter().map(|s| s.alerts).sum::<u64>()
        ),
        None => format!(
            "{} root reachable; nothing published yet (followers wait for the builder)",
            opened.backend.name()
        ),
    })
}

/// The index directory exists and is writable, or its nearest existing parent is (it would be
/// created). Writes and removes a probe file.
fn index_dir_writable(dir: &Path) -> Result<String, String> {
    let mut at = dir;
    while !at.exists() {
        at = at
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    let probe = at.join(format!(".astroflight-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("{} is not writable: {e}", at.display()))?;
    Ok(if at == dir {
        format!("{} is writable", dir.display())
    } else {
        format!("{} would be created in {}", dir.display(), at.display())
    })
}

async fn reach_tcp(endpoint: &str) -> Result<String, String> {
    let url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
    let host = url.host_str().ok_or("the URL names no host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(4317);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(format!("{host}:{port} accepts connections")),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(format!("no answer from {host}:{port} within 5 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reachable_root_passes_and_a_missing_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lake")).unwrap();
        let c = Config::parse(
            "index_dir = \"idx\"\n[[dataset]]\nname = \"a\"\nkind = \"ztf\"\nroot = \"lake\"\n[[dataset]]\nname = \"b\"\nkind = \"ztf\"\nroot = \"http://127.0.0.1:9/x/\"\nconnect_timeout_secs = 1\nretries = 0\n",
            dir.path(),
        )
        .unwrap();
        let found = check(&c).await;
        let get = |w: &str| found.iter().find(|f| f.what == w).unwrap().clone();
        assert!(get("dataset a").ok, "{:?}", found);
        assert!(!get("dataset b").ok, "{:?}", found);
        assert!(get("index_dir").detail.contains("would be created"), "{:?}", found);
        assert!(!dir.path().join("idx").exists(), "check writes nothing");
    }
}
