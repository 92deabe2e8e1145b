//! Hugging Face diffusers models run as diffusers runs them: the fixtures in
//! `tests/fixtures/diffusers/` were written by diffusers itself (`make_fixtures.py` beside them):
//! a small UNet2DModel with google/ddpm-cifar10-32's block structure in the flat, pipeline and
//! 2022-name layouts, its output on fixed inputs, and 10-step sampling runs with their noise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::model::UNet;
use ddpm::pretrained;
use ddpm::train::trainer::load_params;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

/// The float tensors of `reference.safetensors` (as f32) and its integer ones (as i64).
fn reference() -> (
    BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    BTreeMap<String, Vec<i64>>,
) {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut f, mut i) = (BTreeMap::new(), BTreeMap::new());
    for (name, v) in st.tensors() {
        match v.dtype() {
            safetensors::Dtype::F32 => {
                let d = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                f.insert(name, (v.shape().to_vec(), d));
            }
            safetensors::Dtype::I64 => {
                let d = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                i.insert(name, d);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    (f, i)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(dir: &Path, device: &Device) -> UNet {
    let imported = pretrained::import(dir).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
    let cfg = imported.config.model.clone().unwrap();
    load_params(
        UNet::new(&cfg, device).unwrap(),
        &imported.weights,
        "fixture",
        device,
    )
    .unwrap()
}

#[test]
fn every_layout_imports_and_the_unet_matches_diffusers() {
    let (f, _) = reference();
    let device = Device::flex();
    let (xs, x) = &f["x"];
    let (_, t) = &f["t"];
    let (_, want) = &f["unet_out"];
    for layout in ["tiny", "tiny-pipeline", "tiny-legacy"] {
        let net = load(&fixtures().join(layout), &device);
        let xt = Tensor::<4>::from_data(
            TensorData::new(x.clone(), [xs[0], xs[1], xs[2], xs[3]]),
            &device,
        );
        let tt = Tensor::<1>::from_data(TensorData::new(t.clone(), [t.len()]), &device);
        let got: Vec<f32> = net
            .forward(xt, tt)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let d = max_diff(&got, want);
        assert!(d < 1e-4, "{layout}: |ddpm − diffusers| = {d}");
    }
}
