//! Hugging Face diffusers models run as diffusers runs them: the fixtures in
//! `tests/fixtures/diffusers/` were written by diffusers itself (`make_fixtures.py` beside them):
//! a small UNet2DModel with google/ddpm-cifar10-32's block structure in the flat, pipeline and
//! 2022-name layouts, its output on fixed inputs, and 10-step sampling runs with their noise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::model::UNet;
use ddpm::pretrained;
use ddpm::store::params::load_params;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

/// Named float tensors: shape and values.
type Floats = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The float tensors of `reference.safetensors` (as f32) and its integer ones (as i64).
fn reference() -> (Floats, BTreeMap<String, Vec<i64>>) {
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

mod common;

/// A copy of the pipeline fixture in `dir` whose scheduler (or U-Net) configuration has `key`
/// set to `value` (or removed when `value` is null and `remove`).
fn variant(dir: &Path, file: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let src = fixtures().join("tiny-pipeline");
    let dst = dir.join(format!("{}-{key}", file.replace('/', "-")));
    for sub in ["", "unet", "scheduler"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
    }
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let p = dst.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    dst
}

/// `init` and (optionally) `steps` as a noise file for `ddpm sample --noise`.
fn noise_file(path: &Path, init: &(Vec<usize>, Vec<f32>), steps: Option<&(Vec<usize>, Vec<f32>)>) {
    let mut m = BTreeMap::new();
    let mut put = |name: &str, (shape, data): &(Vec<usize>, Vec<f32>)| {
        m.insert(
            name.to_string(),
            ddpm::store::tensors::HostTensor {
                shape: shape.clone(),
                data: data.clone(),
            },
        );
    };
    put("init", init);
    if let Some(s) = steps {
        put("steps", s);
    }
    std::fs::write(path, ddpm::store::tensors::to_safetensors(&m).unwrap()).unwrap();
}

/// `ddpm sample` of the model in `dir` on the noise in `noise`; the raw samples.
fn sample(dir: &Path, sampler: &str, noise: &Path, out: &Path) -> Vec<f32> {
    let o = common::ddpm(&[
        "sample",
        "--checkpoint",
        &dir.display().to_string(),
        "--sampler",
        sampler,
        "--steps",
        "10",
        "--n",
        "2",
        "--noise",
        &noise.display().to_string(),
        "--safetensors",
        "--quiet",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = ddpm::store::tensors::read_safetensors(&out.join("samples.safetensors")).unwrap();
    t["samples"].data.clone()
}

/// Older Hub repos ship only a PyTorch pickle (here float16): read without Python.
#[test]
fn a_pickled_half_precision_unet_imports_and_matches_diffusers() {
    let (f, _) = reference();
    let device = Device::flex();
    let net = load(&fixtures().join("tiny-bin"), &device);
    let (xs, x) = &f["x"];
    let (_, t) = &f["t"];
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
    let want =
        ddpm::store::tensors::read_safetensors(&fixtures().join("bin-reference.safetensors"))
            .unwrap();
    let d = max_diff(&got, &want["unet_out_f16"].data);
    assert!(d < 1e-4, "|ddpm − diffusers| = {d}");
}

#[test]
fn ten_step_sampling_matches_diffusers_pipelines_on_the_same_noise() {
    let (f, steps) = reference();
    assert_eq!(
        steps["ddpm_timesteps"],
        vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    );
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = fixtures().join("tiny-pipeline");
    // DDPMPipeline, fixed_large as diffusers reads it with skipped steps (1 − ᾱ_t/ᾱ_prev).
    let large = tmp.path().join("large.safetensors");
    noise_file(&large, &f["ddpm_init"], Some(&f["ddpm_noise"]));
    let got = sample(&pipeline, "ddpm", &large, &tmp.path().join("a"));
    let d = max_diff(&got, &f["ddpm_out"].1);
    assert!(d < 1e-3, "DDPM fixed_large: |ddpm − diffusers| = {d}");
    // The same U-Net under a fixed_small DDPMScheduler.
    let small_dir = variant(
        tmp.path(),
        "scheduler/scheduler_config.json",
        "variance_type",
        "fixed_small".into(),
    );
    let small = tmp.path().join("small.safetensors");
    noise_file(&small, &f["ddpm_init"], Some(&f["ddpm_small_noise"]));
    let got = sample(&small_dir, "ddpm", &small, &tmp.path().join("b"));
    let d = max_diff(&got, &f["ddpm_small_out"].1);
    assert!(d < 1e-3, "DDPM fixed_small: |ddpm − diffusers| = {d}");
    // DDIMPipeline (η = 0: only x_T).
    let init = tmp.path().join("init.safetensors");
    noise_file(&init, &f["ddpm_init"], None);
    let got = sample(&pipeline, "ddim", &init, &tmp.path().join("c"));
    let d = max_diff(&got, &f["ddim_out"].1);
    assert!(d < 1e-3, "DDIM: |ddpm − diffusers| = {d}");
    // `ddpm import diffusers` makes a run directory that samples the same.
    let run = tmp.path().join("run");
    let o = common::ddpm(&[
        "import",
        "diffusers",
        &pipeline.display().to_string(),
        "--out",
        &run.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("143267 parameters"));
    let again = sample(&run, "ddpm", &large, &tmp.path().join("e"));
    assert_eq!(
        again,
        sample(&pipeline, "ddpm", &large, &tmp.path().join("f"))
    );
    let o = common::ddpm(&[
        "import",
        "diffusers",
        &pipeline.display().to_string(),
        "--out",
        &run.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
    // Too little noise for the stochastic sampler is an error, not a silent substitute.
    let o = common::ddpm(&[
        "sample",
        "--checkpoint",
        &pipeline.display().to_string(),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--n",
        "2",
        "--noise",
        &init.display().to_string(),
        "--out",
        &tmp.path().join("d").display().to_string(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--noise"), "{e}");
    assert!(!tmp.path().join("d").join("grid.png").exists());
}

#[test]
fn the_full_cifar10_key_list_maps_onto_the_cifar10_preset() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("cifar10-keys.json")).unwrap(),
    )
    .unwrap();
    let cfg = ddpm::pretrained::unet_config::unet_config(&v["config"], "cifar10").unwrap();
    let preset = ddpm::model::UNetConfig::cifar10();
    for (what, a, b) in [
        ("channels", cfg.base_channels, preset.base_channels),
        ("res blocks", cfg.num_res_blocks, preset.num_res_blocks),
        ("groups", cfg.groups, preset.groups),
    ] {
        assert_eq!(a, b, "{what}");
    }
    assert_eq!(cfg.channel_mult, preset.channel_mult);
    assert_eq!(cfg.attention_resolutions, preset.attention_resolutions);
    let mut tensors = BTreeMap::new();
    let mut params = 0usize;
    for kv in v["keys"].as_array().unwrap() {
        let name = kv[0].as_str().unwrap().to_string();
        let shape: Vec<usize> = kv[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        params += n;
        tensors.insert(
            name,
            ddpm::store::tensors::HostTensor {
                shape,
                data: vec![0.0; n],
            },
        );
    }
    assert_eq!((tensors.len(), params), (328, 35_746_307));
    let ours = ddpm::pretrained::unet_weights::from_diffusers(tensors, "cifar10").unwrap();
    let device = Device::flex();
    let net = load_params(UNet::new(&cfg, &device).unwrap(), &ours, "cifar10", &device).unwrap();
    use burn::module::Module;
    assert_eq!(net.num_params(), 35_746_307);
    assert_eq!(
        UNet::new(&preset, &device).unwrap().num_params(),
        35_746_307
    );
}

#[test]
fn what_cannot_be_represented_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let unet = "unet/config.json";
    let sched = "scheduler/scheduler_config.json";
    for (file, key, value, needle) in [
        (
            unet,
            "time_embedding_type",
            serde_json::json!("fourier"),
            "time_embedding_type",
        ),
        (unet, "act_fn", serde_json::json!("gelu"), "act_fn"),
        (unet, "sample_size", serde_json::json!([16, 32]), "square"),
        (unet, "out_channels", serde_json::json!(5), "out_channels"),
        (
            unet,
            "down_block_types",
            serde_json::json!([
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D"
            ]),
            "CrossAttnDownBlock2D",
        ),
        (
            unet,
            "up_block_types",
            serde_json::json!(["UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]),
            "up_block_types",
        ),
        (
            unet,
            "block_out_channels",
            serde_json::json!([8, 12, 16, 16]),
            "block_out_channels",
        ),
        (
            unet,
            "class_embed_type",
            serde_json::json!("timestep"),
            "class_embed_type",
        ),
        (
            unet,
            "resnet_time_scale_shift",
            serde_json::json!("ada_group"),
            "resnet_time_scale_shift",
        ),
        (
            unet,
            "mid_block_scale_factor",
            serde_json::json!(2),
            "mid_block_scale_factor",
        ),
        (
            unet,
            "attention_head_dim",
            serde_json::json!(3),
            "attention",
        ),
        (
            unet,
            "_class_name",
            serde_json::json!("UNet2DConditionModel"),
            "UNet2DModel",
        ),
        (
            sched,
            "beta_schedule",
            serde_json::json!("exp"),
            "beta_schedule",
        ),
        (
            sched,
            "prediction_type",
            serde_json::json!("x"),
            "prediction_type",
        ),
        (
            sched,
            "variance_type",
            serde_json::json!("learned"),
            "variance_type",
        ),
        (
            sched,
            "variance_type",
            serde_json::json!("learned_range"),
            "variance",
        ),
        (
            sched,
            "timestep_spacing",
            serde_json::json!("random"),
            "timestep_spacing",
        ),
        (
            sched,
            "clip_sample_range",
            serde_json::json!(2.0),
            "clip_sample_range",
        ),
        (
            sched,
            "set_alpha_to_one",
            serde_json::json!(false),
            "set_alpha_to_one",
        ),
        (
            sched,
            "trained_betas",
            serde_json::json!([0.1, 0.2]),
            "trained_betas",
        ),
    ] {
        let dir = variant(tmp.path(), file, key, value);
        let e = match ddpm::pretrained::import(&dir) {
            Ok(_) => panic!("{key} accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(needle), "{key}: {e}");
        // The CLI says the same, as a usage error.
        let o = common::ddpm(&[
            "sample",
            "--checkpoint",
            &dir.display().to_string(),
            "--n",
            "1",
            "--out",
            &tmp.path().join("s").display().to_string(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{key}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{key}");
    }
    // Thresholding capped below 1 is not clipping: refused.
    let dir = variant(tmp.path(), sched, "thresholding", serde_json::json!(true));
    let p = dir.join(sched);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["sample_max_value"] = serde_json::json!(0.5);
    std::fs::write(&p, v.to_string()).unwrap();
    let e = format!("{:#}", ddpm::pretrained::import(&dir).err().unwrap());
    assert!(e.contains("sample_max_value"), "{e}");
    // A schedule that cannot be built fails the import before its run directory exists.
    let dir = variant(tmp.path(), sched, "beta_end", serde_json::json!(1.5));
    let out = tmp.path().join("never");
    let o = common::ddpm(&[
        "import",
        "diffusers",
        &dir.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(!o.status.success());
    assert!(!out.exists(), "a failed import left {}", out.display());
    // Absent keys take diffusers' defaults: a 2022 config without most keys imports.
    ddpm::pretrained::import(&fixtures().join("tiny-legacy")).unwrap();
}

/// The export direction: `native-export/` is what `ddpm export diffusers` writes for the run in
/// `native-run/` (two attention heads, scale-shift time injection, learned-range variance,
/// v-prediction, cosine schedule over T = 100); diffusers loaded it with
/// `DDPMPipeline.from_pretrained` and recorded its U-Net output and a 10-step sampling run.
#[test]
fn an_exported_run_runs_in_diffusers_as_in_ddpm() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = fixtures().join("native-run/checkpoints/step-00000060");
    let out = tmp.path().join("export");
    let o = common::ddpm(&[
        "export",
        "diffusers",
        "--checkpoint",
        &ckpt.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What diffusers ran is exactly what ddpm exports.
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(
            std::fs::read(out.join(f)).unwrap()
                == std::fs::read(fixtures().join("native-export").join(f)).unwrap(),
            "{f} differs from the exported fixture"
        );
    }
    let bytes = std::fs::read(fixtures().join("native-reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(n).unwrap();
        (
            v.shape().to_vec(),
            v.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    };
    // The run's own network (EMA weights) gives diffusers' output on the exported folder.
    let device = Device::flex();
    let loaded = ddpm::run::load::load_for_inference::<UNet, 4>(&ckpt, false, &device).unwrap();
    let ((xs, x), (_, t)) = (get("x"), get("t"));
    let xt = Tensor::<4>::from_data(TensorData::new(x, [xs[0], xs[1], xs[2], xs[3]]), &device);
    let tt = Tensor::<1>::from_data(TensorData::new(t.clone(), [t.len()]), &device);
    let got: Vec<f32> = loaded
        .model
        .forward(xt, tt)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let d = max_diff(&got, &get("unet_out").1);
    assert!(d < 1e-4, "U-Net: |ddpm − diffusers| = {d}");
    // DDPMPipeline's 10 leading-spaced steps with learned-range variance and v-prediction.
    let noise = tmp.path().join("noise.safetensors");
    noise_file(&noise, &get("ddpm_init"), Some(&get("ddpm_noise")));
    let s = tmp.path().join("s");
    let o = common::ddpm(&[
        "sample",
        "--checkpoint",
        &ckpt.display().to_string(),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--spacing",
        "leading",
        "--n",
        "2",
        "--noise",
        &noise.display().to_string(),
        "--safetensors",
        "--quiet",
        "--out",
        &s.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = ddpm::store::tensors::read_safetensors(&s.join("samples.safetensors")).unwrap();
    let d = max_diff(&got["samples"].data, &get("ddpm_out").1);
    assert!(d < 1e-3, "sampling: |ddpm − diffusers| = {d}");
    // An existing folder is never overwritten; what diffusers cannot express is refused.
    let o = common::ddpm(&[
        "export",
        "diffusers",
        "--checkpoint",
        &ckpt.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
}
