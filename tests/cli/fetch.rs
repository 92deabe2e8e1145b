//! `ddpm fetch` against a local stand-in for the Hugging Face Hub (its API listing and
//! `resolve` downloads, with HTTP ranges): download into the cache, sizes and SHA-256 checked,
//! resumed downloads, tokens, gated repos, offline use of the cache, and `--checkpoint
//! owner/name` naming the cached model.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

/// A request's path and headers.
type Request = (String, BTreeMap<String, String>);

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/tiny-pipeline")
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A one-thread HTTP server for the repos `test/tiny` (the pipeline fixture), `test/bad` (a
/// weights file whose published hash is wrong) and `test/gated` (401). Records every request's
/// path and headers.
struct Hub {
    url: String,
    log: Arc<Mutex<Vec<Request>>>,
}

fn serve() -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let files: Vec<(String, Vec<u8>)> = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(fixtures().join(f)).unwrap()))
    .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_lowercase(), v.trim().to_string());
                }
            }
            seen.lock().unwrap().push((path.clone(), headers.clone()));
            let respond = |s: &mut std::net::TcpStream, status: &str, body: &[u8], extra: &str| {
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
            };
            let repo = |name: &str| format!("/api/models/test/{name}/revision/main?blobs=true");
            let host = headers.get("host").cloned().unwrap_or_default();
            if path == repo("gated") {
                respond(&mut s, "401 Unauthorized", b"{}", "");
            } else if path == repo("redirect") {
                respond(&mut s, "302 Found", b"", "Location: file:///etc/passwd\r\n");
            } else if path == repo("stall") {
                // Accepts, then says nothing for longer than the client waits.
                std::thread::sleep(std::time::Duration::from_secs(4));
            } else if path == repo("unsized") || path == repo("cdn") {
                let sized = path == repo("cdn");
                let siblings: Vec<serde_json::Value> = files
                    .iter()
                    .map(|(f, b)| {
                        if sized {
                            serde_json::json!({"rfilename": f, "size": b.len()})
                        } else {
                            serde_json::json!({"rfilename": f})
                        }
                    })
                    .collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                respond(&mut s, "200 OK", body.as_bytes(), "");
            } else if path.starts_with(&format!("/test/unsized/resolve/{COMMIT}/")) {
                // More than any configuration, and no size listed to check it against.
                let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
                let _ = s.write_all(head.as_bytes());
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..80 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            } else if let Some(f) = path.strip_prefix(&format!("/test/cdn/resolve/{COMMIT}/")) {
                // Large files live on another host: a redirect there, by its other name.
                let port = host.rsplit(':').next().unwrap_or("");
                let to = format!("Location: http://localhost:{port}/cdn/{f}\r\n");
                respond(&mut s, "302 Found", b"", &to);
            } else if let Some(f) = path.strip_prefix("/cdn/") {
                match files.iter().find(|(name, _)| name == f) {
                    Some((_, b)) => respond(&mut s, "200 OK", b, ""),
                    None => respond(&mut s, "404 Not Found", b"", ""),
                }
            } else if path == repo("tiny") || path == repo("bad") || path == repo("resume") {
                let bad = path == repo("bad");
                let siblings: Vec<serde_json::Value> = files
                    .iter()
                    .map(|(f, b)| {
                        if f.ends_with(".safetensors") {
                            let sha = if bad { "0".repeat(64) } else { sha256_hex(b) };
                            serde_json::json!({"rfilename": f, "size": b.len(),
                                "lfs": {"sha256": sha, "size": b.len()}})
                        } else {
                            serde_json::json!({"rfilename": f, "size": b.len()})
                        }
                    })
                    .chain([serde_json::json!({"rfilename": "unet/diffusion_pytorch_model.bin", "size": 4})])
                    .collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                respond(&mut s, "200 OK", body.as_bytes(), "");
            } else if let Some(f) = ["tiny", "bad", "resume"]
                .iter()
                .find_map(|n| path.strip_prefix(&format!("/test/{n}/resolve/{COMMIT}/")))
            {
                match files.iter().find(|(name, _)| name == f) {
                    Some((_, b)) => match headers.get("range") {
                        Some(r) => {
                            let from: usize = r
                                .trim_start_matches("bytes=")
                                .trim_end_matches('-')
                                .parse()
                                .unwrap();
                            let extra = format!(
                                "Content-Range: bytes {from}-{}/{}\r\n",
                                b.len() - 1,
                                b.len()
                            );
                            respond(&mut s, "206 Partial Content", &b[from..], &extra);
                        }
                        None => respond(&mut s, "200 OK", b, ""),
                    },
                    None => respond(&mut s, "404 Not Found", b"", ""),
                }
            } else {
                respond(&mut s, "404 Not Found", b"", "");
            }
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
        }
    });
    Hub { url, log }
}

fn run(args: &[&str], cache: &Path, endpoint: &str, token: Option<&str>) -> Output {
    run_env(args, cache, endpoint, token, &[])
}

/// [`run`] with more environment variables.
fn run_env(
    args: &[&str],
    cache: &Path,
    endpoint: &str,
    token: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"));
    c.args(args)
        .env("DDPM_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN")
        .envs(env.iter().copied());
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.output().unwrap()
}

#[test]
fn fetch_caches_checks_resumes_and_works_offline() {
    let hub = serve();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let o = run(
        &["fetch", "test/tiny", "--quiet"],
        &cache,
        &hub.url,
        Some("hf_secret"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap = cache.join("hub/test--tiny/snapshots").join(COMMIT);
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(fixtures().join(f)).unwrap(),
            "{f}"
        );
    }
    // The pickle copy of the weights is not fetched; the token went with every request.
    assert!(!snap.join("unet/diffusion_pytorch_model.bin").exists());
    {
        let log = hub.log.lock().unwrap();
        assert!(
            log.iter().all(
                |(_, h)| h.get("authorization").map(String::as_str) == Some("Bearer hf_secret")
            )
        );
    }
    // The cached model is named by its repo id.
    let out = tmp.path().join("s");
    let o = run(
        &[
            "sample",
            "--checkpoint",
            "test/tiny",
            "--n",
            "1",
            "--steps",
            "2",
            "--quiet",
            "--out",
            &out.display().to_string(),
        ],
        &cache,
        &hub.url,
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("grid.png").is_file());
    // A second fetch downloads nothing again.
    let before = hub.log.lock().unwrap().len();
    assert!(
        run(&["fetch", "test/tiny", "--quiet"], &cache, &hub.url, None)
            .status
            .success()
    );
    assert_eq!(
        hub.log.lock().unwrap().len(),
        before + 1,
        "only the listing again"
    );
    // Offline (nothing listens there): the cached snapshot.
    let o = run(
        &["fetch", "test/tiny", "--quiet"],
        &cache,
        "http://127.0.0.1:9",
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("using the cached"));
    let o = run(
        &["fetch", "test/other", "--quiet"],
        &cache,
        "http://127.0.0.1:9",
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no complete copy is cached"));

    // An interrupted download resumes from where it stopped.
    let weights =
        std::fs::read(fixtures().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let part = cache
        .join("hub/test--resume/snapshots")
        .join(COMMIT)
        .join("unet/diffusion_pytorch_model.safetensors.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &weights[..1000]).unwrap();
    let o = run(&["fetch", "test/resume", "--quiet"], &cache, &hub.url, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(part.with_file_name("diffusion_pytorch_model.safetensors")).unwrap(),
        weights
    );
    assert!(
        hub.log
            .lock()
            .unwrap()
            .iter()
            .any(|(_, h)| h.get("range").map(String::as_str) == Some("bytes=1000-"))
    );

    // A file whose hash is not the published one is refused and removed.
    let o = run(&["fetch", "test/bad", "--quiet"], &cache, &hub.url, None);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("SHA-256") && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    assert!(!cache.join("hub/test--bad/refs/main").exists());
    // A gated repo without a token says what to do.
    let o = run(&["fetch", "test/gated", "--quiet"], &cache, &hub.url, None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("HF_TOKEN"));
    // A revision is a name, not a path out of the cache.
    let o = run(
        &["fetch", "test/tiny", "--revision", "../../x", "--quiet"],
        &cache,
        &hub.url,
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--revision"));
    // A repo id that was never fetched.
    let o = run(
        &[
            "sample",
            "--checkpoint",
            "test/never",
            "--n",
            "1",
            "--out",
            &tmp.path().join("n").display().to_string(),
        ],
        &cache,
        &hub.url,
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ddpm fetch test/never"));
}

/// Redirects are followed to other hosts without the token, and never to other schemes; a
/// server that stalls is given up after HF_HUB_DOWNLOAD_TIMEOUT seconds; a file listed without
/// a size is not stored past a bound.
#[test]
fn redirects_stalls_and_unsized_files_are_bounded() {
    let hub = serve();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let o = run(
        &["fetch", "test/cdn", "--quiet"],
        &cache,
        &hub.url,
        Some("hf_secret"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap = cache.join("hub/test--cdn/snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snap.join("unet/config.json")).unwrap(),
        std::fs::read(fixtures().join("unet/config.json")).unwrap()
    );
    {
        let log = hub.log.lock().unwrap();
        let (cdn, hub_side): (Vec<&Request>, Vec<&Request>) =
            log.iter().partition(|(p, _)| p.starts_with("/cdn/"));
        assert_eq!(cdn.len(), 4, "{log:?}");
        assert!(cdn.iter().all(|(_, h)| !h.contains_key("authorization")));
        assert!(
            hub_side
                .iter()
                .all(|(_, h)| h.contains_key("authorization"))
        );
    }
    let o = run(
        &["fetch", "test/redirect", "--quiet"],
        &cache,
        &hub.url,
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("file:///etc/passwd") && e.contains("not an http(s) address"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");

    let o = run_env(
        &["fetch", "test/stall", "--quiet"],
        &cache,
        &hub.url,
        None,
        &[("HF_HUB_DOWNLOAD_TIMEOUT", "1")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("timed out") || e.contains("timeout"), "{e}");

    let o = run(
        &["fetch", "test/unsized", "--quiet"],
        &cache,
        &hub.url,
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("listed no size") && e.contains("67108864"),
        "{e}"
    );
    let parts = cache.join("hub/test--unsized/snapshots").join(COMMIT);
    let leftover = walk(&parts);
    assert!(
        leftover.iter().all(|(_, len)| *len <= 64 << 20),
        "{leftover:?}"
    );
}

/// Every file under `dir` with its length.
fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push((p.clone(), p.metadata().unwrap().len()));
            }
        }
    }
    out
}
