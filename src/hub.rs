//! Downloading published weights once into a local cache: Hugging Face Hub repositories (any
//! repo id and revision, `HF_ENDPOINT`, `HF_TOKEN` for gated repos) and single files such as
//! pytorch-fid's Inception weights. Sizes and SHA-256 hashes the server publishes are checked;
//! interrupted downloads resume; a complete snapshot is used offline.
//!
//! Cache layout (`$DDPM_CACHE`, else `$XDG_CACHE_HOME/ddpm`, else `~/.cache/ddpm`):
//! `hub/OWNER--NAME/snapshots/COMMIT/…` (the repo's files), `hub/OWNER--NAME/refs/REVISION`
//! (the commit a revision resolved to), `files/NAME` (single files).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::cache::cache_dir;

/// The Hub endpoint: `HF_ENDPOINT` or huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// Whether `s` looks like a Hub repo id (`owner/name`, no other slashes, no path that exists).
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(s.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

fn repo_dir(repo: &str) -> Result<PathBuf> {
    Ok(cache_dir()?.join("hub").join(repo.replace('/', "--")))
}

/// A revision (branch, tag or commit) as a file name in the cache: no empty or `.`/`..`
/// components (a branch name may hold `/`).
fn check_revision(revision: &str) -> Result<()> {
    if revision.is_empty()
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\\'))
    {
        bail!("--revision `{revision}`: not a branch, tag or commit name");
    }
    Ok(())
}

/// The cached snapshot of `repo` at `revision`, when a complete one is there.
pub fn cached_snapshot(repo: &str, revision: &str) -> Result<Option<PathBuf>> {
    check_revision(revision)?;
    let dir = repo_dir(repo)?;
    let Ok(commit) =
        crate::files::read_text_capped(&dir.join("refs").join(revision), crate::files::TEXT_MAX)
    else {
        return Ok(None);
    };
    let snap = dir.join("snapshots").join(commit.trim());
    Ok(snap.join(".complete").is_file().then_some(snap))
}

/// A file of a repo as the Hub lists it.
#[derive(Debug, Clone)]
struct RepoFile {
    path: String,
    size: Option<u64>,
    sha256: Option<String>,
}

/// Files worth fetching for running a model: configurations, safetensors weights and the
/// model card; not the Flax or ONNX copies of the same weights, nor a PyTorch pickle where
/// safetensors exist.
fn wanted(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".json") || name.ends_with(".safetensors") || name == "README.md"
}

/// The folder part of a repo path (`""` at the top).
fn folder_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Seconds to wait for a connection, and for each read of an answer (a stalled server or one
/// trickling bytes is an error, not a hang).
const CONNECT_TIMEOUT_S: u64 = 30;
const READ_TIMEOUT_S: u64 = 60;
/// Redirects followed per request (the Hub sends large files to its CDN).
const MAX_REDIRECTS: usize = 10;

/// How long to wait for each read: `HF_HUB_DOWNLOAD_TIMEOUT` seconds where set (as
/// huggingface_hub reads it), else [`READ_TIMEOUT_S`].
fn read_timeout() -> std::time::Duration {
    let secs = std::env::var("HF_HUB_DOWNLOAD_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .unwrap_or(READ_TIMEOUT_S as f64);
    std::time::Duration::from_secs_f64(secs)
}

/// An HTTP client for the Hub and release downloads: timeouts on every connection and read,
/// redirects followed only to http(s) addresses, the token sent only to the host it was given
/// for.
struct Client {
    agent: ureq::Agent,
    token: Option<String>,
}

/// Why a request failed: the server's or the connection's answer, or an address that is not
/// followed (not a URL, a redirect to another scheme, too many redirects).
enum HttpError {
    Http(Box<ureq::Error>),
    Unfollowed(String),
}

impl From<ureq::Error> for HttpError {
    fn from(e: ureq::Error) -> Self {
        Self::Http(Box::new(e))
    }
}

impl Client {
    fn new(token: Option<&str>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(CONNECT_TIMEOUT_S))
            .timeout_read(read_timeout())
            .redirects(0)
            .user_agent(concat!("ddpm/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent,
            token: token.map(str::to_string),
        }
    }

    /// GET `url` (from byte `from` on when given), following redirects.
    fn get(&self, url: &str, from: Option<u64>) -> Result<ureq::Response, HttpError> {
        let first =
            url::Url::parse(url).map_err(|e| HttpError::Unfollowed(format!("{url}: {e}")))?;
        let mut at = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.request_url("GET", &at);
            if let Some(t) = &self.token
                && at.host_str() == first.host_str()
            {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            if let Some(b) = from {
                req = req.set("Range", &format!("bytes={b}-"));
            }
            let resp = req.call()?;
            if !(300..400).contains(&resp.status()) {
                return Ok(resp);
            }
            let location = resp.header("Location").unwrap_or_default().to_string();
            at = at
                .join(&location)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    HttpError::Unfollowed(format!(
                        "{at} redirects to `{location}`, which is not an http(s) address"
                    ))
                })?;
        }
        Err(HttpError::Unfollowed(format!(
            "{url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

fn hub_error(repo: &str, e: HttpError) -> anyhow::Error {
    let e = match e {
        HttpError::Http(e) => *e,
        HttpError::Unfollowed(m) => return anyhow::anyhow!("{repo}: {m}"),
    };
    match e {
        ureq::Error::Status(401 | 403, _) => anyhow::anyhow!(
            "{repo}: access denied — a gated or private repo needs a token: set HF_TOKEN to a \
             Hugging Face access token with read access (and accept the repo's terms on its page)"
        ),
        ureq::Error::Status(404, _) => anyhow::anyhow!(
            "{repo}: not found on {} (check the repo id and --revision)",
            endpoint()
        ),
        ureq::Error::Status(code, r) => {
            anyhow::anyhow!("{repo}: the Hub answered {code} {}", r.status_text())
        }
        // The transport error names the address it could not reach.
        ureq::Error::Transport(t) => anyhow::anyhow!("{repo}: {t}"),
    }
}

/// Downloads `repo` at `revision` into the cache (what is there already is kept) and returns
/// the snapshot folder; without network, a complete cached snapshot is returned instead.
/// `progress(file, done, total)` reports bytes.
pub fn fetch_repo(
    repo: &str,
    revision: &str,
    mut progress: impl FnMut(&str, u64, Option<u64>),
) -> Result<PathBuf> {
    if !is_repo_id(repo) {
        bail!("`{repo}` is not a Hub repo id (owner/name)");
    }
    check_revision(revision)?;
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let client = Client::new(token.as_deref());
    let api = format!(
        "{}/api/models/{repo}/revision/{}?blobs=true",
        endpoint(),
        url_escape(revision)
    );
    let info: serde_json::Value = match client.get(&api, None) {
        Ok(r) => {
            let mut text = String::new();
            r.into_reader()
                .take(crate::files::TEXT_MAX)
                .read_to_string(&mut text)
                .with_context(|| format!("{repo}: the Hub's answer broke off"))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{repo}: the Hub's answer is not JSON"))?
        }
        Err(HttpError::Http(t)) if matches!(*t, ureq::Error::Transport(_)) => {
            if let Some(s) = cached_snapshot(repo, revision)? {
                eprintln!(
                    "note: {} unreachable ({t}); using the cached {}",
                    endpoint(),
                    s.display()
                );
                return Ok(s);
            }
            bail!(
                "{repo}: cannot reach {} ({t}) and no complete copy is cached in {}",
                endpoint(),
                repo_dir(repo)?.display()
            );
        }
        Err(e) => return Err(hub_error(repo, e)),
    };
    let commit = info["sha"]
        .as_str()
        .filter(|s| s.len() >= 7 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("{repo}: the Hub gave no commit for revision {revision}"))?
        .to_string();
    let files: Vec<RepoFile> = info["siblings"]
        .as_array()
        .with_context(|| format!("{repo}: the Hub listed no files"))?
        .iter()
        .filter_map(|s| {
            Some(RepoFile {
                path: s["rfilename"].as_str()?.to_string(),
                size: s["lfs"]["size"].as_u64().or(s["size"].as_u64()),
                sha256: s["lfs"]["sha256"].as_str().map(str::to_lowercase),
            })
        })
        .collect();
    // The pickle copy of the weights only where a folder has no safetensors (older repos).
    let with_safetensors: Vec<String> = files
        .iter()
        .filter(|f| f.path.rsplit('/').next() == Some(crate::pretrained::WEIGHTS_FILE))
        .map(|f| folder_of(&f.path).to_string())
        .collect();
    let files: Vec<RepoFile> = files
        .into_iter()
        .filter(|f| {
            wanted(&f.path)
                || (f.path.ends_with("diffusion_pytorch_model.bin")
                    && !with_safetensors.iter().any(|d| d == folder_of(&f.path)))
        })
        .collect();
    if files.is_empty() {
        bail!("{repo}: no configuration or safetensors files at revision {revision}");
    }
    let dir = repo_dir(repo)?;
    let snap = dir.join("snapshots").join(&commit);
    for f in &files {
        if f.path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            bail!("{repo}: refusing the file name {:?}", f.path);
        }
        let dest = snap.join(&f.path);
        if dest.is_file()
            && f.size
                .is_none_or(|s| dest.metadata().map(|m| m.len()).ok() == Some(s))
        {
            continue;
        }
        let url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            endpoint(),
            f.path
                .split('/')
                .map(url_escape)
                .collect::<Vec<_>>()
                .join("/")
        );
        download(
            &client,
            &url,
            &dest,
            f.size.ok_or(UNSIZED_MAX),
            f.sha256.as_deref(),
            &mut |d, t| progress(&f.path, d, t),
        )
        .with_context(|| format!("{repo}: {}", f.path))?;
    }
    crate::files::write_atomic(&snap.join(".complete"), commit.as_bytes())?;
    crate::files::write_atomic(&dir.join("refs").join(revision), commit.as_bytes())?;
    Ok(snap)
}

/// The most bytes stored of a Hub file listed without a size (every large file is listed with
/// one; configurations are a few KB).
const UNSIZED_MAX: u64 = 64 << 20;

/// Downloads `url` to `dest` through `dest.part` (resumed from its length with an HTTP range
/// when it exists), then checks the size and SHA-256 when known and renames it into place.
/// `size`: the listed size, or (unknown) the most bytes to accept.
fn download(
    client: &Client,
    url: &str,
    dest: &Path,
    size: Result<u64, u64>,
    sha256: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<()> {
    let (max, size) = match size {
        Ok(s) => (s, Some(s)),
        Err(max) => (max, None),
    };
    let part = dest.with_file_name(format!(
        "{}.part",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    if let Some(p) = part.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let resp = match client.get(url, (have > 0).then_some(have)) {
        Ok(r) => r,
        // A range past the end: the part is complete (or wrong; the checks below tell).
        Err(HttpError::Http(e)) if have > 0 && matches!(*e, ureq::Error::Status(416, _)) => {
            return finish(&part, dest, size, sha256);
        }
        Err(e) => return Err(hub_error(url, e)),
    };
    // A 206 must continue where the part ends; anything else starts over.
    let resumed = resp.status() == 206
        && resp.header("Content-Range").is_some_and(|r| {
            r.trim_start_matches("bytes ")
                .starts_with(&format!("{have}-"))
        });
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut done = if resumed { have } else { 0 };
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).context("the download broke off")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        done += n as u64;
        if done > max {
            drop(out);
            std::fs::remove_file(&part).ok();
            match size {
                Some(s) => bail!(
                    "the server sent more than the {s} bytes it listed; the download was removed"
                ),
                None => bail!(
                    "the server listed no size and sent more than {max} bytes, the most taken \
                     for such a file; the download was removed"
                ),
            }
        }
        progress(done, size);
    }
    out.sync_all().ok();
    drop(out);
    finish(&part, dest, size, sha256)
}

/// Checks a downloaded part and moves it into place; a part that fails is removed.
fn finish(part: &Path, dest: &Path, size: Option<u64>, sha256: Option<&str>) -> Result<()> {
    let len = std::fs::metadata(part)?.len();
    if let Some(s) = size
        && len > s
    {
        std::fs::remove_file(part).ok();
        bail!("the download is longer than the {s} bytes listed ({len}); it was removed");
    }
    if let Some(s) = size
        && len != s
    {
        bail!("incomplete download: {len} of {s} bytes (run the command again to resume)");
    }
    if let Some(want) = sha256 {
        let got = sha256_file(part)?;
        if got != want {
            std::fs::remove_file(part).ok();
            bail!("SHA-256 {got} does not match the published {want}; the download was removed");
        }
    }
    std::fs::rename(part, dest)
        .with_context(|| format!("cannot move {} into place", part.display()))?;
    Ok(())
}

/// The SHA-256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The most bytes [`fetch_file`] stores (the Inception weights are 96 MB).
const FILE_MAX: u64 = 1 << 30;

/// A single file at `url` cached as `files/NAME` (NAME: the URL's last segment). When the name
/// ends in `-HEX.ext` (torch hub's convention, e.g. pt_inception-2015-12-05-6726825d.pth), the
/// file's SHA-256 must start with HEX.
pub fn fetch_file(url: &str, mut progress: impl FnMut(u64, Option<u64>)) -> Result<PathBuf> {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.contains(".."))
        .with_context(|| format!("{url}: no file name"))?;
    let dest = cache_dir()?.join("files").join(name);
    if dest.is_file() {
        return Ok(dest);
    }
    download(
        &Client::new(None),
        url,
        &dest,
        Err(FILE_MAX),
        None,
        &mut progress,
    )?;
    if let Some(prefix) = hash_prefix(name) {
        let got = sha256_file(&dest)?;
        if !got.starts_with(&prefix) {
            std::fs::remove_file(&dest).ok();
            bail!("{name}: SHA-256 {got} does not start with {prefix}; the download was removed");
        }
    }
    Ok(dest)
}

/// The hex hash prefix in a torch-hub style file name (`name-HEX.ext`).
fn hash_prefix(name: &str) -> Option<String> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let (_, h) = stem.rsplit_once('-')?;
    (h.len() >= 6 && h.chars().all(|c| c.is_ascii_hexdigit())).then(|| h.to_lowercase())
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_hash_prefixes() {
        for ok in ["google/ddpm-cifar10-32", "a/b", "Org_1/model.v2"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in ["google", "a/b/c", "../x", "a/..", "a b/c", "/x", "x/"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        assert_eq!(
            hash_prefix("pt_inception-2015-12-05-6726825d.pth").as_deref(),
            Some("6726825d")
        );
        assert_eq!(hash_prefix("weights.pth"), None);
        assert_eq!(url_escape("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
