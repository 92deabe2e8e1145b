//! Downloading the standard datasets from their usual public mirrors, verified by checksum.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};

use crate::files::write_atomic;

/// What a checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The MD5 of the file as downloaded.
    Download,
    /// The MD5 of the gunzipped content (robust to re-compressed mirrors).
    Gunzipped,
}

/// One file of a remote dataset.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// File name on the mirror and on disk.
    pub name: String,
    /// Expected MD5 (hex).
    pub md5: String,
    /// What the MD5 covers.
    pub checked: Checked,
}

/// A dataset: its files and the mirrors that serve them (tried in order).
#[derive(Debug, Clone)]
pub struct Remote {
    /// Dataset name.
    pub name: String,
    /// Base URLs, each ending in `/`.
    pub mirrors: Vec<String>,
    /// Files.
    pub files: Vec<RemoteFile>,
    /// A tar.gz to unpack after download (CIFAR-10).
    pub unpack: bool,
}

fn file(name: &str, md5: &str, checked: Checked) -> RemoteFile {
    RemoteFile {
        name: name.into(),
        md5: md5.into(),
        checked,
    }
}

/// The known datasets. MNIST is checked on its decompressed content (the MD5s published with
/// the original files); Fashion-MNIST and CIFAR-10 on the archives, with the MD5s torchvision
/// publishes.
pub fn known(name: &str) -> Result<Remote> {
    Ok(match name {
        "mnist" => Remote {
            name: name.into(),
            mirrors: vec![
                "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
                "https://storage.googleapis.com/cvdf-datasets/mnist/".into(),
            ],
            files: vec![
                file(
                    "train-images-idx3-ubyte.gz",
                    "6bbc9ace898e44ae57da46a324031adb",
                    Checked::Gunzipped,
                ),
                file(
                    "train-labels-idx1-ubyte.gz",
                    "a25bea736e30d166cdddb491f175f624",
                    Checked::Gunzipped,
                ),
                file(
                    "t10k-images-idx3-ubyte.gz",
                    "2646ac647ad5339dbf082846283269ea",
                    Checked::Gunzipped,
                ),
                file(
                    "t10k-labels-idx1-ubyte.gz",
                    "27ae3e4e09519cfbb04c329615203637",
                    Checked::Gunzipped,
                ),
            ],
            unpack: false,
        },
        "fashion-mnist" => Remote {
            name: name.into(),
            mirrors: vec!["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into()],
            files: vec![
                file(
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    Checked::Download,
                ),
                file(
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    Checked::Download,
                ),
                file(
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                    Checked::Download,
                ),
                file(
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    Checked::Download,
                ),
            ],
            unpack: false,
        },
        "cifar10" => Remote {
            name: name.into(),
            mirrors: vec!["https://www.cs.toronto.edu/~kriz/".into()],
            files: vec![file(
                "cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530",
                Checked::Download,
            )],
            unpack: true,
        },
        o => bail!("unknown dataset `{o}`; expected mnist, fashion-mnist or cifar10"),
    })
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify(f: &RemoteFile, bytes: &[u8]) -> Result<()> {
    let digest = match f.checked {
        Checked::Download => md5_hex(bytes),
        Checked::Gunzipped => {
            let raw = super::idx::gunzip_if_needed(bytes.to_vec(), &f.name)?;
            md5_hex(&raw)
        }
    };
    if digest != f.md5 {
        bail!(
            "{}: checksum mismatch (MD5 {digest}, expected {})",
            f.name,
            f.md5
        );
    }
    Ok(())
}

fn download(url: &str) -> Result<Vec<u8>> {
    let resp = ureq::get(url)
        .timeout(std::time::Duration::from_secs(60))
        .call()
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let mut buf = Vec::new();
    resp.into_reader()
        .take(1 << 31)
        .read_to_end(&mut buf)
        .with_context(|| format!("{url}: the download broke off"))?;
    Ok(buf)
}

/// Downloads every file of `remote` into `dir` (skipping files already present with the right
/// checksum), verifying each before it is written (atomically). Returns the files in `dir`.
pub fn fetch(remote: &Remote, dir: &Path, mut log: impl FnMut(&str)) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    for f in &remote.files {
        let path = dir.join(&f.name);
        if let Ok(existing) = std::fs::read(&path)
            && verify(f, &existing).is_ok()
        {
            log(&format!("{} already present and verified", path.display()));
            out.push(path);
            continue;
        }
        let mut errors = Vec::new();
        let mut got = None;
        for m in &remote.mirrors {
            let url = format!("{m}{}", f.name);
            log(&format!("downloading {url}"));
            match download(&url).and_then(|b| verify(f, &b).map(|_| b)) {
                Ok(b) => {
                    got = Some(b);
                    break;
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let Some(bytes) = got else {
            bail!(
                "cannot fetch {} of {} from any mirror (no network?):\n  {}",
                f.name,
                remote.name,
                errors.join("\n  ")
            );
        };
        write_atomic(&path, &bytes)?;
        if remote.unpack {
            let gz = flate2::read::GzDecoder::new(&bytes[..]);
            let mut ar = tar::Archive::new(gz);
            for entry in ar.entries().context("reading the archive")? {
                let mut entry = entry?;
                let p = entry.path()?.to_path_buf();
                if p.extension().and_then(|e| e.to_str()) == Some("bin") {
                    let name = p.file_name().unwrap_or_default().to_owned();
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    write_atomic(&dir.join(&name), &data)?;
                    out.push(dir.join(name));
                }
            }
        }
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serves `body` to each of `n` requests on a loopback port.
    fn serve(body: Vec<u8>, n: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().take(n) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}/")
    }

    fn remote(mirror: String, md5: &str) -> Remote {
        Remote {
            name: "test".into(),
            mirrors: vec![mirror],
            files: vec![file("data.bin", md5, Checked::Download)],
            unpack: false,
        }
    }

    #[test]
    fn downloads_and_verifies_from_a_local_server() {
        let body = b"hello diffusion".to_vec();
        let md5 = md5_hex(&body);
        let dir = tempfile::tempdir().unwrap();
        let files = fetch(&remote(serve(body.clone(), 1), &md5), dir.path(), |_| {}).unwrap();
        assert_eq!(std::fs::read(&files[0]).unwrap(), body);
        // Present and verified: no second download (the server would refuse).
        fetch(
            &remote("http://127.0.0.1:9/".into(), &md5),
            dir.path(),
            |_| {},
        )
        .unwrap();
    }

    #[test]
    fn a_wrong_checksum_or_no_network_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = fetch(
            &remote(
                serve(b"tampered".to_vec(), 1),
                "00000000000000000000000000000000",
            ),
            dir.path(),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(!dir.path().join("data.bin").exists());
        // Port 9 (discard) on loopback: connection refused.
        let e = fetch(
            &remote("http://127.0.0.1:9/".into(), "x"),
            dir.path(),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no network"), "{e}");
        assert!(known("imagenet").is_err());
    }
}
