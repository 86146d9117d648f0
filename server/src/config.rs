//! Configuration: one TOML file, with environment overrides.
//!
//! Precedence: environment variable > file > default. The variables are listed in [`ENV_VARS`]
//! and in the README:
//!
//! | variable                  | overrides   |
//! |---------------------------|-------------|
//! | `ASTROFLIGHT_CONFIG`      | the config file path (when `--config` is not given) |
//! | `ASTROFLIGHT_LISTEN`      | `listen`    |
//! | `ASTROFLIGHT_INDEX_DIR`   | `index_dir` |
//!
//! Relative paths in the file (`index_dir`, a `root` without a scheme) are relative to the
//! file's directory, so a config and its lake can move together.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use astroflight_index::SurveyKind;

use crate::error::{Error, Result};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8815";
pub const ENV_VARS: [&str; 3] = ["ASTROFLIGHT_CONFIG", "ASTROFLIGHT_LISTEN", "ASTROFLIGHT_INDEX_DIR"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to serve on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the sled index.
    #[serde(default = "default_index_dir")]
    pub index_dir: PathBuf,
    /// Parquet footers (with their offset index) kept in memory, in files.
    #[serde(default = "default_footer_cache")]
    pub footer_cache_files: usize,
    /// Run an incremental index build of every dataset when the server starts.
    #[serde(default = "default_true")]
    pub index_on_start: bool,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub kind: DatasetKind,
    /// `file:///abs/path`, or a plain path (relative to the config file).
    pub root: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Ztf,
    Lsst,
}

impl DatasetKind {
    pub fn survey(self) -> SurveyKind {
        match self {
            DatasetKind::Ztf => SurveyKind::Ztf,
            DatasetKind::Lsst => SurveyKind::Lsst,
        }
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_index_dir() -> PathBuf {
    PathBuf::from("astroflight-index")
}
fn default_footer_cache() -> usize {
    1024
}
fn default_true() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Config {
    /// Parse a config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut c: Config =
            toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("invalid configuration: {e}")))?;
        c.index_dir = base.join(&c.index_dir);
        for d in &mut c.datasets {
            if !d.root.contains("://") {
                d.root = base.join(&d.root).to_string_lossy().into_owned();
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Load a file (or `$ASTROFLIGHT_CONFIG`), then apply the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let env_path = std::env::var_os("ASTROFLIGHT_CONFIG").map(PathBuf::from);
        let mut c = match path.map(Path::to_path_buf).or(env_path) {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Error::InvalidArgument(format!("cannot read configuration {}: {e}", p.display())))?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let base = if base.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    base
                };
                Config::parse(&text, &base)?
            }
            None => Config::default(),
        };
        c.apply_env(|k| std::env::var(k).ok());
        Ok(c)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("ASTROFLIGHT_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("ASTROFLIGHT_INDEX_DIR") {
            self.index_dir = PathBuf::from(v);
        }
    }

    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for d in &self.datasets {
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::InvalidArgument(format!(
                    "dataset name {:?} is invalid: use letters, digits, '_' and '-'",
                    d.name
                )));
            }
            if !names.insert(d.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "dataset {:?} is configured twice",
                    d.name
                )));
            }
        }
        Ok(())
    }

    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_resolve_and_override() {
        let c = Config::parse(
            r#"
            listen = "127.0.0.1:9000"
            index_dir = "idx"
            [[dataset]]
            name = "ztf"
            kind = "ztf"
            root = "lake/ztf"
            [[dataset]]
            name = "lsst"
            kind = "lsst"
            root = "file:///data/lsst"
            "#,
            Path::new("/etc/af"),
        )
        .unwrap();
        assert_eq!(c.index_dir, PathBuf::from("/etc/af/idx"));
        assert_eq!(c.datasets[0].root, "/etc/af/lake/ztf");
        assert_eq!(c.datasets[1].root, "file:///data/lsst");
        assert_eq!(c.datasets[1].kind, DatasetKind::Lsst);
        assert!(c.index_on_start);
        let mut c = c;
        c.apply_env(|k| (k == "ASTROFLIGHT_LISTEN").then(|| "127.0.0.1:1".to_string()));
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(Config::default().listen, DEFAULT_LISTEN);
    }

    #[test]
    fn bad_configs_say_why() {
        let e = |t: &str| Config::parse(t, Path::new(".")).unwrap_err().to_string();
        assert!(e("lisen = 1").contains("unknown field `lisen`"));
        assert!(e("[[dataset]]\nname='a'\nkind='fits'\nroot='x'").contains("unknown variant `fits`"));
        assert!(e("[[dataset]]\nname='a/b'\nkind='ztf'\nroot='x'").contains("invalid"));
        assert!(
            e("[[dataset]]\nname='a'\nkind='ztf'\nroot='x'\n[[dataset]]\nname='a'\nkind='ztf'\nroot='y'")
                .contains("twice")
        );
    }
}
