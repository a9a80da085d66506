//! Vendored subchart archives (`charts/*.tgz`) are checked before Helm sees them: Helm expands
//! them in memory, so a gzip bomb, a `../` entry or a link would reach it first. Checking here
//! streams each archive once with constant memory and names what is wrong.

use std::io::Read;
use std::path::{Component, Path};

/// Bounds on one chart's vendored archives, all of them together.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// Largest expanded size of all archives of a chart (Helm's own default is 100 MiB).
    pub max_expanded_bytes: u64,
    /// Largest single file inside an archive (Helm's own default is 5 MiB).
    pub max_file_bytes: u64,
    /// Most entries across all archives.
    pub max_entries: usize,
    /// How deep archives may nest (a subchart's own `charts/*.tgz`).
    pub max_nesting: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_expanded_bytes: 100 << 20,
            max_file_bytes: 5 << 20,
            max_entries: 10_000,
            max_nesting: 4,
        }
    }
}

/// Why an archive was refused: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{archive}: {reason}")]
pub struct ArchiveRefused {
    /// The archive, relative to the chart folder.
    pub archive: String,
    /// What is wrong with it.
    pub reason: String,
}

struct Budget {
    limits: ArchiveLimits,
    expanded: u64,
    entries: usize,
}

/// Checks every `charts/*.tgz` (and `.tar.gz`) of the chart folder `chart`.
pub fn check_chart(chart: &Path, limits: ArchiveLimits) -> Result<(), ArchiveRefused> {
    let Ok(entries) = std::fs::read_dir(chart.join("charts")) else {
        return Ok(());
    };
    let mut budget = Budget {
        limits,
        expanded: 0,
        entries: 0,
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_archive(n))
        .collect();
    names.sort();
    for name in names {
        let shown = format!("charts/{name}");
        let refuse = |reason: String| ArchiveRefused {
            archive: shown.clone(),
            reason,
        };
        let file = std::fs::File::open(chart.join("charts").join(&name))
            .map_err(|e| refuse(format!("cannot be read: {e}")))?;
        check_archive(file, 0, &mut budget).map_err(refuse)?;
    }
    Ok(())
}

/// Checks one archive streamed from `reader`, as [`check_chart`] checks each file: what is wrong,
/// if anything.
pub fn check_archive_stream(reader: impl Read, limits: ArchiveLimits) -> Result<(), String> {
    let mut budget = Budget {
        limits,
        expanded: 0,
        entries: 0,
    };
    check_archive(reader, 0, &mut budget)
}

/// Unpacks a chart archive (a downloaded `.tgz`) into `dest` once it passed the same checks as a
/// vendored subchart; the chart's folder (the archive's one top-level folder), itself checked as
/// a chart folder is.
pub fn unpack_chart(
    archive: &[u8],
    dest: &Path,
    limits: ArchiveLimits,
) -> Result<std::path::PathBuf, String> {
    check_archive_stream(archive, limits)?;
    // The stream passed the checks: only regular files and folders below one root, bounded.
    tar::Archive::new(flate2::read::GzDecoder::new(archive))
        .unpack(dest)
        .map_err(|e| format!("cannot be unpacked: {e}"))?;
    let mut tops = std::fs::read_dir(dest)
        .map_err(|e| format!("cannot be unpacked: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir());
    let (Some(top), None) = (tops.next(), tops.next()) else {
        return Err("does not hold exactly one chart folder".into());
    };
    let chart = top.path();
    if !chart.join("Chart.yaml").is_file() {
        return Err("has no Chart.yaml in its folder".into());
    }
    check_chart(&chart, limits).map_err(|refused| refused.to_string())?;
    Ok(chart)
}

fn is_archive(name: &str) -> bool {
    name.ends_with(".tgz") || name.ends_with(".tar.gz")
}

fn check_archive(reader: impl Read, depth: usize, budget: &mut Budget) -> Result<(), String> {
    if depth >= budget.limits.max_nesting {
        return Err(format!(
            "archives nest deeper than {}",
            budget.limits.max_nesting
        ));
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let entries = archive
        .entries()
        .map_err(|e| format!("is not a gzipped tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("is not a valid archive: {e}"))?;
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(format!(
                "holds more than {} entries",
                budget.limits.max_entries
            ));
        }
        let path = entry
            .path()
            .map_err(|_| "has an entry whose name is not a path".to_owned())?
            .into_owned();
        let shown = path.to_string_lossy().escape_debug().to_string();
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!("entry {shown:?} leaves the archive's folder"));
        }
        if path.to_string_lossy().contains('\\') {
            return Err(format!("entry {shown:?} has a backslash in its name"));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "entry {shown:?} is not a regular file (links and devices are refused)"
            ));
        }
        // Read the entry through a bounded window: the header's size can lie, the stream cannot.
        let cap = budget
            .limits
            .max_file_bytes
            .min(budget.limits.max_expanded_bytes - budget.expanded);
        let mut window = (&mut entry).take(cap + 1);
        let nested = is_archive(&shown) && is_dependency(&path);
        let size = if nested {
            let mut bytes = Vec::new();
            window
                .read_to_end(&mut bytes)
                .map_err(|e| format!("entry {shown:?} cannot be read: {e}"))?;
            if bytes.len() as u64 <= cap {
                budget.expanded += bytes.len() as u64;
                check_archive(bytes.as_slice(), depth + 1, budget)
                    .map_err(|reason| format!("{shown}: {reason}"))?;
            }
            bytes.len() as u64
        } else {
            std::io::copy(&mut window, &mut std::io::sink())
                .map_err(|e| format!("entry {shown:?} cannot be read: {e}"))?
        };
        if size > cap {
            return Err(if size > budget.limits.max_file_bytes {
                format!(
                    "entry {shown:?} expands to more than {} bytes",
                    budget.limits.max_file_bytes
                )
            } else {
                format!(
                    "expands to more than {} bytes",
                    budget.limits.max_expanded_bytes
                )
            });
        }
        if !nested {
            budget.expanded += size;
        }
    }
    Ok(())
}

/// `<chart>/charts/<name>.tgz`: an archive Helm would load as a nested dependency.
fn is_dependency(path: &Path) -> bool {
    let parts: Vec<_> = path.components().collect();
    parts.len() == 3 && parts[1].as_os_str() == "charts"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_archive_unpacks_to_its_folder_and_a_bad_one_leaves_nothing_usable() {
        let chart = tgz(|b| {
            file(
                b,
                "webapp/Chart.yaml",
                b"apiVersion: v2\nname: webapp\nversion: 1.0.0\n",
            );
            file(b, "webapp/templates/cm.yaml", b"kind: ConfigMap\n");
        });
        let dest = tempfile::tempdir().unwrap();
        let folder = unpack_chart(&chart, dest.path(), ArchiveLimits::default()).unwrap();
        assert_eq!(folder, dest.path().join("webapp"));
        assert!(folder.join("templates/cm.yaml").is_file());

        let two = tgz(|b| {
            file(b, "a/Chart.yaml", b"x");
            file(b, "b/Chart.yaml", b"x");
        });
        let dest = tempfile::tempdir().unwrap();
        assert!(unpack_chart(&two, dest.path(), ArchiveLimits::default()).is_err());
        let limits = ArchiveLimits {
            max_file_bytes: 4,
            ..ArchiveLimits::default()
        };
        let dest = tempfile::tempdir().unwrap();
        let refused = unpack_chart(&chart, dest.path(), limits).unwrap_err();
        assert!(
            refused.contains("expands to more than 4 bytes"),
            "{refused}"
        );
        assert_eq!(
            std::fs::read_dir(dest.path()).unwrap().count(),
            0,
            "refused before unpacking"
        );
    }

    fn tgz(build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn file(
        builder: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
        name: &str,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: `set_path` refuses `..`, which is what is tested.
        let name_field = &mut header.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn check(bytes: &[u8], limits: ArchiveLimits) -> Result<(), String> {
        let mut budget = Budget {
            limits,
            expanded: 0,
            entries: 0,
        };
        check_archive(bytes, 0, &mut budget)
    }

    #[test]
    fn a_plain_subchart_passes() {
        let archive = tgz(|b| {
            file(
                b,
                "sub/Chart.yaml",
                b"apiVersion: v2\nname: sub\nversion: 0.1.0\n",
            );
            file(b, "sub/templates/cm.yaml", b"kind: ConfigMap\n");
        });
        assert_eq!(check(&archive, ArchiveLimits::default()), Ok(()));
    }

    #[test]
    fn parent_references_absolute_paths_and_links_are_refused() {
        let escape = tgz(|b| file(b, "sub/../../etc/cron.d/x", b"boom"));
        assert!(
            check(&escape, ArchiveLimits::default())
                .unwrap_err()
                .contains("leaves")
        );
        let absolute = tgz(|b| file(b, "/etc/passwd", b"boom"));
        assert!(
            check(&absolute, ArchiveLimits::default())
                .unwrap_err()
                .contains("leaves")
        );
        for kind in [tar::EntryType::Link, tar::EntryType::Symlink] {
            let link = tgz(|b| {
                let mut header = tar::Header::new_gnu();
                header.set_size(0);
                header.set_entry_type(kind);
                b.append_link(&mut header, "sub/templates/x.yaml", "/etc/passwd")
                    .unwrap();
            });
            let error = check(&link, ArchiveLimits::default()).unwrap_err();
            assert!(error.contains("not a regular file"), "{error}");
        }
    }

    #[test]
    fn an_archive_expanding_past_the_limit_is_refused_without_expanding_it() {
        let limits = ArchiveLimits {
            max_expanded_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
            ..ArchiveLimits::default()
        };
        let bomb = tgz(|b| file(b, "sub/templates/big.yaml", &vec![0u8; 4 << 20]));
        assert!(bomb.len() < 64 << 10, "the test archive is a bomb");
        let error = check(&bomb, limits).unwrap_err();
        assert!(error.contains("more than"), "{error}");
    }

    #[test]
    fn nested_archives_share_one_budget_and_nest_only_so_deep() {
        let limits = ArchiveLimits {
            max_expanded_bytes: 3 << 20,
            max_file_bytes: 2 << 20,
            ..ArchiveLimits::default()
        };
        let inner = tgz(|b| file(b, "inner/templates/big.yaml", &vec![0u8; 2 << 20]));
        let outer = tgz(|b| {
            file(b, "sub/templates/big.yaml", &vec![0u8; 2 << 20]);
            file(b, "sub/charts/inner.tgz", &inner);
        });
        assert!(check(&outer, limits).is_err());
        let mut nested = tgz(|b| file(b, "leaf/Chart.yaml", b"name: leaf\n"));
        for level in 0..5 {
            nested = tgz(|b| file(b, &format!("l{level}/charts/next.tgz"), &nested));
        }
        let error = check(&nested, ArchiveLimits::default()).unwrap_err();
        assert!(error.contains("nest deeper"), "{error}");
    }
}
