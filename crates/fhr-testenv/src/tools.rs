//! Where the control-plane binaries and `helm` live.
//!
//! `cargo xtask tools` builds them from the pinned Go modules under `tools/` into a cache outside
//! the repository, in a folder named after a digest of those modules, so a version bump builds anew
//! and an unchanged pin is never rebuilt. `KUBEBUILDER_ASSETS` (a folder with `kube-apiserver` and
//! `etcd`, envtest's convention) and `HELM_BIN` point at existing binaries instead.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A pinned Go module under `tools/` that builds some binaries.
#[derive(Debug, Clone, Copy)]
pub struct ToolModule {
    /// Short name, used in the cache folder name.
    pub name: &'static str,
    /// Folder of the repository holding `go.mod`.
    pub dir: &'static str,
    /// The module whose version names the cache folder.
    pub versioned_module: &'static str,
    /// (binary name, Go package) pairs the module builds.
    pub binaries: &'static [(&'static str, &'static str)],
    /// Go variables the release build stamps, as `(variable, value)`; `{version}`, `{major}` and
    /// `{minor}` stand for the pinned version's parts.
    pub stamps: &'static [(&'static str, &'static str)],
    /// Files of the module whose contents key the cache; the first is `go.mod`.
    sources: &'static [&'static str],
    /// Whether every file of `dir` keys the cache too (a module of this repository's own code).
    whole_dir: bool,
}

/// The control plane: kube-apiserver and the etcd it pins.
pub const CONTROL_PLANE: ToolModule = ToolModule {
    name: "kube-apiserver",
    dir: "tools/controlplane",
    versioned_module: "k8s.io/kubernetes",
    binaries: &[
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        ("etcd", "./etcd"),
    ],
    // Without these /version says v0.0.0-master, and charts with a kubeVersion constraint fail.
    stamps: &[
        ("k8s.io/component-base/version.gitVersion", "{version}"),
        ("k8s.io/component-base/version.gitMajor", "{major}"),
        ("k8s.io/component-base/version.gitMinor", "{minor}"),
        ("k8s.io/component-base/version.gitTreeState", "clean"),
    ],
    sources: &[
        include_str!("../../../tools/controlplane/go.mod"),
        include_str!("../../../tools/controlplane/go.sum"),
        include_str!("../../../tools/controlplane/etcd/main.go"),
    ],
    whole_dir: false,
};

/// The Helm engine the operator runs, and the helm (v4) CLI of the same pinned SDK: the CLI
/// fallback, and what tests read Helm's storage with as a user would.
pub const HELM_ENGINE: ToolModule = ToolModule {
    name: "helm-engine",
    dir: "engine",
    versioned_module: "helm.sh/helm/v4",
    binaries: &[
        ("fhr-helm-engine", "."),
        ("helm", "helm.sh/helm/v4/cmd/helm"),
    ],
    stamps: &[
        ("helm.sh/helm/v4/internal/version.version", "{version}"),
        ("helm.sh/helm/v4/internal/version.gitTreeState", "clean"),
    ],
    // Every file of the module keys the cache (read at run time): a new Go file needs no entry here.
    sources: &[include_str!("../../../engine/go.mod")],
    whole_dir: true,
};

/// The helm v3 CLI: users still run it, so tests check it reads what the operator writes.
pub const HELM: ToolModule = ToolModule {
    name: "helm",
    dir: "tools/helm",
    versioned_module: "helm.sh/helm/v3",
    binaries: &[("helm", "helm.sh/helm/v3/cmd/helm")],
    stamps: &[
        ("helm.sh/helm/v3/internal/version.version", "{version}"),
        ("helm.sh/helm/v3/internal/version.gitTreeState", "clean"),
    ],
    sources: &[
        include_str!("../../../tools/helm/go.mod"),
        include_str!("../../../tools/helm/go.sum"),
    ],
    whole_dir: false,
};

/// crane, for `crane registry serve`: the OCI registry the chart-source tests push charts to.
pub const REGISTRY: ToolModule = ToolModule {
    name: "registry",
    dir: "tools/registry",
    versioned_module: "github.com/google/go-containerregistry",
    binaries: &[("crane", "github.com/google/go-containerregistry/cmd/crane")],
    stamps: &[],
    sources: &[
        include_str!("../../../tools/registry/go.mod"),
        include_str!("../../../tools/registry/go.sum"),
    ],
    whole_dir: false,
};

/// Flux's helm-controller: the baseline `cargo xtask bench` measures against (built by the
/// benchmark only, not by the test command).
pub const FLUX_HELM_CONTROLLER: ToolModule = ToolModule {
    name: "flux-helm-controller",
    dir: "tools/flux/helm-controller",
    versioned_module: "github.com/fluxcd/helm-controller",
    binaries: &[("helm-controller", "github.com/fluxcd/helm-controller")],
    stamps: &[],
    sources: &[
        include_str!("../../../tools/flux/helm-controller/go.mod"),
        include_str!("../../../tools/flux/helm-controller/go.sum"),
    ],
    whole_dir: false,
};

/// Flux's source-controller, which serves helm-controller its charts in the benchmark.
pub const FLUX_SOURCE_CONTROLLER: ToolModule = ToolModule {
    name: "flux-source-controller",
    dir: "tools/flux/source-controller",
    versioned_module: "github.com/fluxcd/source-controller",
    binaries: &[("source-controller", "github.com/fluxcd/source-controller")],
    stamps: &[],
    sources: &[
        include_str!("../../../tools/flux/source-controller/go.mod"),
        include_str!("../../../tools/flux/source-controller/go.sum"),
    ],
    whole_dir: false,
};

impl ToolModule {
    /// The pinned version of [`ToolModule::versioned_module`], read from `go.mod`.
    pub fn version(&self) -> &'static str {
        self.sources[0]
            .lines()
            .map(str::trim)
            .find_map(|line| {
                let rest = line
                    .strip_prefix("require ")
                    .unwrap_or(line)
                    .strip_prefix(self.versioned_module)?;
                // Not a longer module path that starts with this one (`…/api`).
                if !rest.starts_with(char::is_whitespace) {
                    return None;
                }
                rest.split_whitespace().next()
            })
            .unwrap_or("unknown")
    }

    /// The `-ldflags` of the build: stripped, with the version stamped as the release build does.
    pub fn ldflags(&self) -> String {
        let version = self.version();
        let mut parts = version.trim_start_matches('v').split('.');
        let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut flags = String::from("-s -w");
        for (variable, value) in self.stamps {
            let value = value
                .replace("{version}", version)
                .replace("{major}", major)
                .replace("{minor}", minor);
            flags.push_str(&format!(" -X {variable}={value}"));
        }
        flags
    }

    /// The cache folder for this module's binaries: version plus a digest of the pinned sources
    /// and the build flags.
    pub fn cache_dir(&self) -> PathBuf {
        let mut digest = Sha256::new();
        for source in self
            .sources
            .iter()
            .copied()
            .chain([self.ldflags().as_str()])
        {
            digest.update(source.as_bytes());
            digest.update([0]);
        }
        if self.whole_dir {
            let dir = repository_dir().join(self.dir);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for file in files.iter().filter(|f| f.is_file()) {
                digest.update(file.file_name().unwrap_or_default().as_encoded_bytes());
                digest.update(std::fs::read(file).unwrap_or_default());
                digest.update([0]);
            }
        }
        let digest = digest.finalize();
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        cache_root()
            .join("tools")
            .join(format!("{}-{}-{short}", self.name, self.version()))
    }
}

/// Root of everything flux-helm caches on this machine: `$FLUX_HELM_CACHE`, else
/// `$XDG_CACHE_HOME/flux-helm`, else `~/.cache/flux-helm`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUX_HELM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("flux-helm");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("flux-helm")
}

/// The root of this repository (the Go modules' `dir`s are relative to it).
pub fn repository_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary the tests need is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "{binary} not found at {}: run `cargo xtask tools` to build it, or set {hint}",
    path.display()
)]
pub struct MissingTool {
    /// The binary's name.
    pub binary: &'static str,
    /// Where it was looked for.
    pub path: PathBuf,
    /// The environment variable that overrides the location.
    pub hint: &'static str,
}

/// Paths of the binaries the control plane and the tests run.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `helm` (v4, the operator's `--helm-engine=cli`).
    pub helm: PathBuf,
    /// `helm` v3, for compatibility checks.
    pub helm3: PathBuf,
    /// `fhr-helm-engine`.
    pub engine: PathBuf,
}

impl Tools {
    /// Finds every binary, honouring `KUBEBUILDER_ASSETS`, `HELM_BIN`, `HELM3_BIN` and
    /// `HELM_ENGINE_BIN`; an error names what is missing.
    pub fn locate() -> Result<Tools, MissingTool> {
        let assets = std::env::var_os("KUBEBUILDER_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| CONTROL_PLANE.cache_dir());
        let from_env = |variable: &str, default: PathBuf| {
            std::env::var_os(variable)
                .map(PathBuf::from)
                .unwrap_or(default)
        };
        let tools = Tools {
            kube_apiserver: assets.join("kube-apiserver"),
            etcd: assets.join("etcd"),
            helm: from_env("HELM_BIN", HELM_ENGINE.cache_dir().join("helm")),
            helm3: from_env("HELM3_BIN", HELM.cache_dir().join("helm")),
            engine: from_env(
                "HELM_ENGINE_BIN",
                HELM_ENGINE.cache_dir().join("fhr-helm-engine"),
            ),
        };
        for (binary, path, hint) in [
            (
                "kube-apiserver",
                &tools.kube_apiserver,
                "KUBEBUILDER_ASSETS",
            ),
            ("etcd", &tools.etcd, "KUBEBUILDER_ASSETS"),
            ("helm", &tools.helm, "HELM_BIN"),
            ("helm v3", &tools.helm3, "HELM3_BIN"),
            ("fhr-helm-engine", &tools.engine, "HELM_ENGINE_BIN"),
        ] {
            if !path.is_file() {
                return Err(MissingTool {
                    binary,
                    path: path.clone(),
                    hint,
                });
            }
        }
        Ok(tools)
    }

    /// helm-operator's flags that name the Helm engine and the helm CLI.
    pub fn operator_flags(&self) -> [String; 2] {
        [
            format!("--helm-engine-bin={}", self.engine.display()),
            format!("--helm-bin={}", self.helm.display()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_pinned_modules() {
        assert!(
            CONTROL_PLANE.version().starts_with("v1."),
            "{}",
            CONTROL_PLANE.version()
        );
        assert!(HELM.version().starts_with("v3."), "{}", HELM.version());
        assert!(
            HELM_ENGINE.version().starts_with("v4."),
            "{}",
            HELM_ENGINE.version()
        );
    }

    #[test]
    fn builds_stamp_the_pinned_version() {
        let flags = CONTROL_PLANE.ldflags();
        let version = CONTROL_PLANE.version();
        assert!(
            flags.contains(&format!("version.gitVersion={version}")),
            "{flags}"
        );
        let minor = version.split('.').nth(1).unwrap();
        assert!(
            flags.contains(&format!("version.gitMinor={minor}")),
            "{flags}"
        );
        assert!(
            HELM.ldflags()
                .contains(&format!("version.version={}", HELM.version()))
        );
    }

    #[test]
    fn cache_dirs_differ_per_module_and_name_the_version() {
        let cp = CONTROL_PLANE.cache_dir();
        let helm = HELM.cache_dir();
        assert_ne!(cp, helm);
        let name = cp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("kube-apiserver-{}-", CONTROL_PLANE.version())));
    }
}
