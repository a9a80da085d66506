//! `cargo xtask image`: both container images, built with buildah from locally built binaries
//! on a root filesystem assembled here — no base image to pull, no Docker daemon. Each root
//! filesystem holds the binaries, exactly the shared libraries they load (found with `ldd`), CA
//! certificates, and a non-root user. The images are then checked the only way this machine
//! allows (OCI runtimes are refused `setrlimit`, so nothing is run as a container): by reading
//! their configuration, by running each binary's `--version` with `chroot` in the image's own
//! root filesystem as the image's user, and by comparing them with the Dockerfiles under
//! deploy/docker, which describe the same images for builders with a registry.

use anyhow::{Context, bail};
use fhr_testenv::tools::HELM_ENGINE;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user the images run as (as in the Dockerfiles and the Deployments' securityContext).
const USER: &str = "65532:65532";
/// The admin port both daemons listen on.
const PORT: &str = "3030/tcp";

/// `cargo xtask image` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cargo profile the daemons are built with (`dev` is quicker, for checking the assembly).
    #[arg(long, default_value = "release")]
    profile: String,
}

/// One image: its name, the Dockerfile describing it, and its binaries (the first is the
/// entrypoint) with where they come from.
struct Image {
    name: &'static str,
    description: &'static str,
    binaries: Vec<(&'static str, PathBuf)>,
}

impl Image {
    fn reference(&self) -> String {
        format!("flux-helm/{}:{}", self.name, env!("CARGO_PKG_VERSION"))
    }

    fn dockerfile(&self) -> PathBuf {
        crate::root()
            .join("deploy/docker")
            .join(format!("{}.Dockerfile", self.name))
    }

    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("org.opencontainers.image.title", self.name.to_owned()),
            (
                "org.opencontainers.image.description",
                self.description.to_owned(),
            ),
            (
                "org.opencontainers.image.version",
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            ("org.opencontainers.image.licenses", "Apache-2.0".to_owned()),
        ]
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let buildah = which("buildah").context(
        "buildah is not installed (Debian: `apt-get install buildah`); it builds the images without a Docker daemon, and needs root",
    )?;
    crate::run_step(
        &format!("cargo build --profile {} (the daemons)", args.profile),
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--profile",
            &args.profile,
            "-p",
            "flux-agent",
            "-p",
            "helm-operator",
        ]),
    )?;
    crate::tools::build_module(&crate::tools::which_go()?, &HELM_ENGINE, false)?;
    let target = crate::root().join("target").join(if args.profile == "dev" {
        "debug"
    } else {
        &args.profile
    });
    let engine = HELM_ENGINE.cache_dir();
    let ssh = which("ssh")
        .context("ssh (openssh-client) is needed in the images for ssh:// repositories")?;
    let images = [
        Image {
            name: "flux-agent",
            description: "flux-helm's flux-agent: applies release configuration from git",
            binaries: vec![("flux-agent", target.join("flux-agent"))],
        },
        Image {
            name: "helm-operator",
            description: "flux-helm's helm-operator: installs and upgrades Helm releases",
            binaries: vec![
                ("helm-operator", target.join("helm-operator")),
                ("fhr-helm-engine", engine.join("fhr-helm-engine")),
                ("helm", engine.join("helm")),
            ],
        },
    ];
    let out = crate::root().join("target/images");
    let storage = Storage::new(&buildah, &out);
    for image in &images {
        eprintln!("==> image {}", image.reference());
        let rootfs = out.join(image.name).join("rootfs");
        assemble(image, &ssh, &rootfs)?;
        let archive = out.join(format!(
            "{}-{}.oci.tar",
            image.name,
            env!("CARGO_PKG_VERSION")
        ));
        storage.build(image, &rootfs, &archive)?;
        check(&storage, image)?;
        eprintln!(
            "{} checked; OCI archive {}",
            image.reference(),
            archive.display()
        );
    }
    Ok(())
}

/// The path of `program` on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Lays out an image's root filesystem: binaries under /usr/local/bin, ssh, the libraries they
/// load, CA certificates, the user and a /tmp.
fn assemble(image: &Image, ssh: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(rootfs);
    let bin = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    let mut executables = Vec::new();
    for (name, source) in &image.binaries {
        let to = bin.join(name);
        std::fs::copy(source, &to).with_context(|| format!("copy {}", source.display()))?;
        executables.push(to);
    }
    // gix runs the ssh client for ssh:// repositories.
    let to = rootfs.join("usr/bin/ssh");
    std::fs::create_dir_all(to.parent().expect("a folder"))?;
    std::fs::copy(ssh, &to)?;
    executables.push(to);
    let mut libraries = BTreeSet::new();
    for executable in &executables {
        libraries.extend(shared_libraries(executable)?);
    }
    for library in &libraries {
        let to = rootfs.join(library.strip_prefix("/").unwrap_or(library));
        std::fs::create_dir_all(to.parent().expect("a folder"))?;
        // The file the link names, under the name the loader looks for.
        std::fs::copy(library, &to).with_context(|| format!("copy {}", library.display()))?;
    }
    let certificates = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(etc.join("ssl/certs"))?;
    std::fs::copy(certificates, etc.join("ssl/certs/ca-certificates.crt"))
        .context("CA certificates (Debian: ca-certificates)")?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/usr/sbin/nologin\nflux:x:65532:65532:flux:/nonexistent:/usr/sbin/nologin\n",
    )?;
    std::fs::write(etc.join("group"), "root:x:0:\nflux:x:65532:\n")?;
    std::fs::write(
        etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// The shared libraries `executable` loads, as `ldd` resolves them (none for a static binary).
fn shared_libraries(executable: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(executable)
        .output()
        .context("run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    Ok(text.lines().filter_map(library_path).collect())
}

/// The library path of one `ldd` line (`libc.so.6 => /lib/…/libc.so.6 (0x…)` or
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`); none for the kernel's vDSO.
fn library_path(line: &str) -> Option<PathBuf> {
    let line = line.trim();
    let path = match line.split_once(" => ") {
        Some((_, resolved)) => resolved.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// buildah with its storage under target/images (vfs: no overlay mounts needed).
struct Storage {
    buildah: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
}

impl Storage {
    fn new(buildah: &Path, out: &Path) -> Storage {
        Storage {
            buildah: buildah.to_owned(),
            root: out.join("storage"),
            runroot: out.join("run"),
        }
    }

    /// Runs buildah with `args`; its standard output, trimmed.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.buildah)
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(args)
            .output()
            .context("run buildah")?;
        if !output.status.success() {
            bail!(
                "buildah {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Builds the image from `rootfs` and writes it as an OCI archive too.
    fn build(&self, image: &Image, rootfs: &Path, archive: &Path) -> anyhow::Result<()> {
        let container = self.run(&["from", "scratch"])?;
        let rootfs = format!("{}/", rootfs.display());
        self.run(&["copy", &container, &rootfs, "/"])?;
        let entrypoint = format!("[\"/usr/local/bin/{}\"]", image.binaries[0].0);
        let mut config = vec![
            "config",
            "--user",
            USER,
            "--entrypoint",
            &entrypoint,
            "--port",
            PORT,
            "--env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "--workingdir",
            "/",
        ];
        let labels: Vec<String> = image
            .labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for label in &labels {
            config.extend(["--label", label]);
        }
        config.push(&container);
        self.run(&config)?;
        let reference = image.reference();
        self.run(&["commit", "--rm", &container, &reference])?;
        let _ = std::fs::remove_file(archive);
        self.run(&[
            "push",
            &reference,
            &format!("oci-archive:{}", archive.display()),
        ])?;
        Ok(())
    }
}

/// Reads the image's configuration, runs each binary's `--version` in its root filesystem as its
/// user, and compares it with its Dockerfile.
fn check(storage: &Storage, image: &Image) -> anyhow::Result<()> {
    let reference = image.reference();
    let inspected: Value =
        serde_json::from_str(&storage.run(&["inspect", "--type", "image", &reference])?)?;
    let config = &inspected["OCIv1"]["config"];
    let entrypoint = format!("/usr/local/bin/{}", image.binaries[0].0);
    let expect = |what: &str, found: &Value, wanted: &Value| -> anyhow::Result<()> {
        if found != wanted {
            bail!("{reference}: {what} is {found}, not {wanted}");
        }
        Ok(())
    };
    expect("the user", &config["User"], &Value::from(USER))?;
    expect(
        "the entrypoint",
        &config["Entrypoint"],
        &serde_json::json!([entrypoint]),
    )?;
    expect(
        "the exposed port",
        &config["ExposedPorts"],
        &serde_json::json!({PORT: {}}),
    )?;
    for (key, value) in image.labels() {
        expect(
            &format!("label {key}"),
            &config["Labels"][key],
            &Value::from(value),
        )?;
    }

    let chroot = which("chroot").context("chroot (coreutils) checks the images")?;
    let container = storage.run(&["from", &reference])?;
    let checked = (|| {
        let rootfs = PathBuf::from(storage.run(&["mount", &container])?);
        // A container runtime provides /dev; chroot does not, and ssh opens /dev/null.
        std::fs::create_dir_all(rootfs.join("dev"))?;
        let null = rootfs.join("dev/null");
        if !null.exists() {
            crate::run_step(
                "mknod /dev/null in the check's working container",
                Command::new("mknod")
                    .args(["-m", "666"])
                    .arg(&null)
                    .args(["c", "1", "3"]),
            )?;
        }
        let mut commands: Vec<Vec<String>> = image
            .binaries
            .iter()
            .map(|(name, _)| {
                let version = if *name == "helm" {
                    "version"
                } else {
                    "--version"
                };
                vec![format!("/usr/local/bin/{name}"), version.to_owned()]
            })
            .collect();
        commands.push(vec!["/usr/bin/ssh".into(), "-V".into()]);
        for command in commands {
            // Nothing of this machine's environment leaks in: the image's PATH only.
            let output = Command::new(&chroot)
                .arg(format!("--userspec={USER}"))
                .arg(&rootfs)
                .args(&command)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .output()
                .context("run chroot (it needs root)")?;
            if !output.status.success() {
                bail!(
                    "{reference}: `{}` in the image's root filesystem failed: {}",
                    command.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let said =
                String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
            eprintln!(
                "  {}: {}",
                command.join(" "),
                said.lines().next().unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })();
    let _ = storage.run(&["umount", &container]);
    let _ = storage.run(&["rm", &container]);
    checked?;

    let dockerfile = std::fs::read_to_string(image.dockerfile())?;
    let described = Described::parse(&dockerfile);
    let binaries: BTreeSet<String> = image
        .binaries
        .iter()
        .map(|(name, _)| format!("/usr/local/bin/{name}"))
        .collect();
    let labels: BTreeSet<(String, String)> = image
        .labels()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let wanted = Described {
        user: Some(USER.to_owned()),
        entrypoint: Some(format!("[\"{entrypoint}\"]")),
        expose: Some("3030".to_owned()),
        binaries,
        labels,
    };
    if described != wanted {
        bail!(
            "{} describes another image than `cargo xtask image` builds:\n  Dockerfile: {described:?}\n  image:      {wanted:?}",
            image.dockerfile().display()
        );
    }
    Ok(())
}

/// What a Dockerfile's final stage says about the image.
#[derive(Debug, Default, PartialEq, Eq)]
struct Described {
    user: Option<String>,
    entrypoint: Option<String>,
    expose: Option<String>,
    /// Where the final stage copies files from the build stages to.
    binaries: BTreeSet<String>,
    labels: BTreeSet<(String, String)>,
}

impl Described {
    fn parse(dockerfile: &str) -> Described {
        let mut described = Described::default();
        // Continuation lines joined, then only the final stage (after the last FROM) counts.
        let joined = dockerfile.replace("\\\n", " ");
        let final_stage = joined
            .rsplit_once("\nFROM ")
            .map(|(_, stage)| stage)
            .unwrap_or(&joined);
        for line in final_stage.lines().map(str::trim) {
            let Some((instruction, rest)) = line.split_once(' ') else {
                continue;
            };
            let rest = rest.trim();
            match instruction {
                "USER" => described.user = Some(rest.to_owned()),
                "ENTRYPOINT" => described.entrypoint = Some(rest.to_owned()),
                "EXPOSE" => described.expose = Some(rest.to_owned()),
                "COPY" if rest.starts_with("--from=") => {
                    if let Some(to) = rest.split_whitespace().last() {
                        described.binaries.insert(to.to_owned());
                    }
                }
                "LABEL" => {
                    for pair in split_labels(rest) {
                        described.labels.insert(pair);
                    }
                }
                _ => {}
            }
        }
        described
    }
}

/// `key="value" key2="value two"` pairs of a LABEL instruction.
fn split_labels(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().to_owned();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, remaining)) => (value.to_owned(), remaining),
                None => (quoted.to_owned(), ""),
            },
            None => match after.split_once(char::is_whitespace) {
                Some((value, remaining)) => (value.to_owned(), remaining),
                None => (after.to_owned(), ""),
            },
        };
        pairs.push((key, value));
        rest = remaining.trim();
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        assert_eq!(
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)"),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(library_path("\tlinux-vdso.so.1 (0x00007ffd)"), None);
    }

    #[test]
    fn the_final_stage_of_a_dockerfile_is_read() {
        let described = Described::parse(
            "FROM rust AS build\nUSER 0\nCOPY . .\nFROM debian\nLABEL a=\"one two\" b=3\nCOPY --from=build /src/x \\\n  /usr/local/bin/x\nUSER 65532:65532\nEXPOSE 3030\nENTRYPOINT [\"/usr/local/bin/x\"]\n",
        );
        assert_eq!(described.user.as_deref(), Some("65532:65532"));
        assert_eq!(
            described.entrypoint.as_deref(),
            Some("[\"/usr/local/bin/x\"]")
        );
        assert_eq!(
            described.binaries,
            BTreeSet::from(["/usr/local/bin/x".to_owned()])
        );
        assert_eq!(
            described.labels,
            BTreeSet::from([("a".into(), "one two".into()), ("b".into(), "3".into())])
        );
    }
}
