//! MNIST-style IDX image files (LeCun et al.), gzipped or raw.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, Split};

/// Grayscale images from an IDX3 file, scaled from [0, 255] to [−1, 1].
#[derive(Debug, Clone)]
pub struct IdxImages {
    pixels: Vec<u8>,
    labels: Option<Vec<u8>>,
    count: usize,
    rows: usize,
    cols: usize,
    source: String,
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic, and never more than its
/// header declares: the header is read first, then at most the announced values plus one byte
/// (to tell a file with trailing data). A small gzip file that inflates far beyond its header
/// (a decompression bomb) costs no more memory than the header admits.
/// `magic` is the header's first four bytes the caller expects (0x803 for images, 0x801 for
/// labels); another is an error saying so.
pub fn read_idx_file(path: &Path, magic: u32) -> Result<Vec<u8>> {
    use std::io::BufRead;
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?;
    let mut buffered = std::io::BufReader::new(file);
    let gz = buffered
        .fill_buf()
        .with_context(|| format!("cannot read {name}"))?
        .starts_with(&[0x1f, 0x8b]);
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let broken = || format!("{name}: cannot read it (corrupt or truncated gzip data?)");
    let gz_note = if gz {
        " (corrupt or truncated gzip data?)"
    } else {
        ""
    };
    let mut out = vec![0u8; 4];
    if let Err(e) = r.read_exact(&mut out) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bail!("{name}: too short for an IDX header{gz_note}");
        }
        return Err(e).with_context(broken);
    }
    let found = u32::from_be_bytes(out[..4].try_into().expect("4 bytes"));
    if found != magic {
        bail!(
            "{name}: wrong magic number 0x{found:08x}; this IDX file should start with 0x{magic:08x}"
        );
    }
    let value_bytes: u64 = match out[2] {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        t => bail!("{name}: not an IDX file (unknown value type 0x{t:02x} in its header)"),
    };
    let dims = out[3] as usize;
    if out[..2] != [0, 0] || !(1..=4).contains(&dims) {
        bail!(
            "{name}: not an IDX file (its header starts 0x{:02x}{:02x}{:02x}{:02x})",
            out[0],
            out[1],
            out[2],
            out[3]
        );
    }
    out.resize(4 + 4 * dims, 0);
    if let Err(e) = r.read_exact(&mut out[4..]) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bail!("{name}: too short for an IDX header of {dims} dimensions{gz_note}");
        }
        return Err(e).with_context(broken);
    }
    let announced = out[4..]
        .chunks_exact(4)
        .try_fold(value_bytes, |acc, d| {
            acc.checked_mul(u32::from_be_bytes(d.try_into().expect("4 bytes")) as u64)
        })
        .with_context(|| format!("{name}: the sizes in its header overflow"))?;
    if let Some(avail) = crate::heap::available_memory()
        && announced > avail
    {
        bail!(
            "{name}: its header announces {announced} bytes of values, more than the {avail} bytes \
             of memory available; a damaged header?"
        );
    }
    let head = out.len();
    // Room for exactly what the header announces (checked against the available memory
    // above): a growing buffer would reach twice that at its last doubling.
    out.reserve_exact(usize::try_from(announced.saturating_add(1)).unwrap_or(usize::MAX));
    r.take(announced.saturating_add(1))
        .read_to_end(&mut out)
        .with_context(broken)?;
    if (out.len() - head) as u64 > announced {
        bail!(
            "{name}: holds more data than its header announces ({announced} bytes of values); \
             a damaged file or a header that was edited"
        );
    }
    Ok(out)
}

/// Gunzips `raw` when it starts with the gzip magic; `name` names it in errors.
pub fn gunzip_if_needed(raw: Vec<u8>, name: &str) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{name}: corrupt or truncated gzip data"))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

impl IdxImages {
    /// Parses IDX3 bytes (magic 0x00000803, then count, rows, cols as big-endian u32); the
    /// pixels stay in `bytes` (no second copy of a large file).
    pub fn parse(bytes: Vec<u8>, source: &str) -> Result<Self> {
        if bytes.len() < 16 {
            bail!(
                "{source}: {} bytes is too short for an IDX image header (16 bytes)",
                bytes.len()
            );
        }
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let magic = be(0);
        if magic != 0x0803 {
            bail!(
                "{source}: wrong magic number 0x{magic:08x}; an IDX image file starts with 0x00000803"
            );
        }
        let (count, rows, cols) = (be(4), be(8), be(12));
        let need = count
            .checked_mul(rows)
            .and_then(|x| x.checked_mul(cols))
            .context("image dimensions overflow")?;
        let have = bytes.len() - 16;
        if have != need {
            bail!(
                "{source}: header announces {count} images of {rows}×{cols} ({need} bytes) but the file holds {have} bytes of pixels{}",
                if have < need { " (truncated?)" } else { "" }
            );
        }
        if count == 0 {
            bail!("{source}: holds no images");
        }
        let mut pixels = bytes;
        pixels.drain(..16);
        Ok(Self {
            pixels,
            labels: None,
            count,
            rows,
            cols,
            source: source.to_string(),
        })
    }

    /// Opens the images of `split` in `dir`: `train-images-idx3-ubyte[.gz]` or
    /// `t10k-images-idx3-ubyte[.gz]`, with their labels (`…-labels-idx1-ubyte[.gz]`) when the
    /// folder has them.
    pub fn open_dir(dir: &Path, split: Split) -> Result<Self> {
        let stem = match split {
            Split::Train => "train-images-idx3-ubyte",
            Split::Test => "t10k-images-idx3-ubyte",
        };
        let candidates: Vec<PathBuf> = [format!("{stem}.gz"), stem.to_string()]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            bail!(
                "{}: no {stem}.gz or {stem} found (expected the MNIST IDX files; `ddpm data fetch mnist --dir {}` downloads them)",
                dir.display(),
                dir.display()
            );
        };
        let bytes = read_idx_file(path, 0x0803)?;
        let images = Self::parse(bytes, &path.display().to_string())?;
        // Labels only where a readable file has one per image: unconditional uses of a
        // subset of images beside a full labels file keep working.
        match labels_path(dir, split).and_then(|_| open_labels_dir(dir, split).ok()) {
            Some(l) if l.len() == images.count => images.with_labels(l),
            _ => Ok(images),
        }
    }

    /// These images with their labels (one per image, each below 256).
    pub fn with_labels(mut self, labels: Vec<u8>) -> Result<Self> {
        if labels.len() != self.count {
            bail!(
                "{}: {} labels for {} images",
                self.source,
                labels.len(),
                self.count
            );
        }
        self.labels = Some(labels);
        Ok(self)
    }

    /// Image height.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Image width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Raw pixels of image `i`.
    pub fn raw(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

impl Dataset for IdxImages {
    fn len(&self) -> usize {
        self.count
    }

    fn item_shape(&self) -> Vec<usize> {
        vec![1, self.rows, self.cols]
    }

    fn get(&self, index: usize, out: &mut [f32]) {
        for (o, &p) in out.iter_mut().zip(self.raw(index)) {
            *o = p as f32 / 127.5 - 1.0;
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} images, {}×{})",
            self.source, self.count, self.rows, self.cols
        )
    }

    fn classes(&self) -> Vec<String> {
        let n = self
            .labels
            .as_ref()
            .map_or(0, |l| l.iter().map(|&x| x as usize + 1).max().unwrap_or(0));
        super::numbered_classes(n)
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.labels.as_ref().map(|l| l[index] as usize)
    }
}

/// Labels from an IDX1 file (magic 0x00000801).
pub fn parse_labels(bytes: &[u8], source: &str) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        bail!("{source}: too short for an IDX label header (8 bytes)");
    }
    let magic = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
    if magic != 0x0801 {
        bail!(
            "{source}: wrong magic number 0x{magic:08x}; an IDX label file starts with 0x00000801"
        );
    }
    let n = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    if bytes.len() - 8 != n {
        bail!(
            "{source}: header announces {n} labels but the file holds {}",
            bytes.len() - 8
        );
    }
    Ok(bytes[8..].to_vec())
}

fn labels_path(dir: &Path, split: Split) -> Option<PathBuf> {
    let stem = match split {
        Split::Train => "train-labels-idx1-ubyte",
        Split::Test => "t10k-labels-idx1-ubyte",
    };
    [format!("{stem}.gz"), stem.to_string()]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The labels of `split` in `dir`: `train-labels-idx1-ubyte[.gz]` or `t10k-labels-idx1-ubyte[.gz]`.
pub fn open_labels_dir(dir: &Path, split: Split) -> Result<Vec<u8>> {
    let Some(path) = labels_path(dir, split) else {
        let stem = match split {
            Split::Train => "train-labels-idx1-ubyte",
            Split::Test => "t10k-labels-idx1-ubyte",
        };
        bail!(
            "{}: no {stem}.gz or {stem} found (the labels of the IDX images)",
            dir.display()
        );
    };
    parse_labels(&read_idx_file(&path, 0x0801)?, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [0x0803u32, count, rows, cols] {
            v.extend(x.to_be_bytes());
        }
        v.extend((0..pixels).map(|i| (i % 256) as u8));
        v
    }

    #[test]
    fn parses_and_scales_to_minus_one_one() {
        let d = IdxImages::parse(idx(2, 2, 2, 8), "t").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.item_shape(), vec![1, 2, 2]);
        let mut out = [0.0f32; 4];
        d.get(0, &mut out);
        assert_eq!(out[0], -1.0);
        let full = IdxImages::parse(
            {
                let mut v = idx(1, 1, 1, 0);
                v.push(255);
                v
            },
            "t",
        )
        .unwrap();
        let mut one = [0.0f32];
        full.get(0, &mut one);
        assert_eq!(one[0], 1.0);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let e = IdxImages::parse(idx(2, 2, 2, 7), "f.idx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.idx") && e.contains("truncated"), "{e}");
        let mut bad = idx(2, 2, 2, 8);
        bad[3] = 0x01;
        let e = IdxImages::parse(bad, "g").unwrap_err().to_string();
        assert!(e.contains("wrong magic"), "{e}");
        assert!(
            IdxImages::parse(vec![0, 0], "h")
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
        let e = gunzip_if_needed(vec![0x1f, 0x8b, 8, 0, 1, 2, 3], "z.gz")
            .unwrap_err()
            .to_string();
        assert!(e.contains("z.gz") && e.contains("corrupt"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = IdxImages::open_dir(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }

    /// A gzip file whose header announces 2 images of 2×2 but that inflates to 64 MiB: the read
    /// stops one byte past the announced pixels instead of inflating it all.
    #[test]
    fn a_decompression_bomb_is_refused_at_the_announced_size() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&idx(2, 2, 2, 8)).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        let e = IdxImages::open_dir(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more data than its header announces"), "{e}");
        // The same file without the surplus reads.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&idx(2, 2, 2, 8)).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert_eq!(
            IdxImages::open_dir(dir.path(), Split::Train).unwrap().len(),
            2
        );
        let bytes = read_idx_file(&path, 0x0803).unwrap();
        assert_eq!(bytes.len(), 16 + 8);
    }

    /// A large file is held once: the buffer is sized by the header (a growing one reaches twice
    /// the file at its last doubling), and the images keep it rather than a copy.
    #[test]
    fn a_file_is_read_into_one_buffer_of_its_announced_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        let (count, side) = (3000u32, 28u32);
        std::fs::write(
            &path,
            idx(count, side, side, (count * side * side) as usize),
        )
        .unwrap();
        let bytes = read_idx_file(&path, 0x0803).unwrap();
        let announced = (count * side * side) as usize;
        assert_eq!(bytes.len(), 16 + announced);
        assert!(
            bytes.capacity() <= 16 + announced + 64,
            "{}",
            bytes.capacity()
        );
        let ptr = bytes.as_ptr();
        let images = IdxImages::parse(bytes, "t").unwrap();
        assert_eq!(images.pixels.as_ptr(), ptr, "the pixels were copied");
    }
}
