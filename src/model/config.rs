//! Hyper-parameters of the networks and the named presets.

use serde::{Deserialize, Serialize};

/// How the timestep is turned into features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TimeFeatures {
    /// Transformer sinusoidal position embedding (Vaswani et al. 2017; Ho et al. §4):
    /// [sin(t·f_i), cos(t·f_i)], f_i = 10000^(−i/(d/2 − 1)).
    Sinusoidal,
    /// Random Fourier features (Tancik et al. 2020; Song et al. 2021): [sin(2π·t·w_i),
    /// cos(2π·t·w_i)] with fixed w_i ~ N(0, scale²) drawn from `seed`.
    Fourier {
        /// Standard deviation of the frequencies.
        scale: f64,
        /// Seed of the frequencies (part of the model's definition).
        seed: u64,
    },
}

/// How the time embedding enters a residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeInjection {
    /// Added to the activations after the first convolution (Ho et al.).
    Add,
    /// Adaptive group normalization: GroupNorm(h)·(1 + s) + b with (s, b) from the embedding
    /// (Dhariwal & Nichol 2021, §3).
    ScaleShift,
}

/// The U-Net noise predictor of Ho et al. (2020) / Nichol & Dhariwal (2021).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out (doubled internally when `learn_sigma`).
    pub out_channels: usize,
    /// Height = width of the images.
    pub image_size: usize,
    /// Channels of the first level.
    pub base_channels: usize,
    /// Channel multiplier per level; the resolution halves between levels.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub num_res_blocks: usize,
    /// Resolutions (in pixels) at which self-attention follows each residual block.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads (ignored when `num_head_channels` is set).
    pub num_heads: usize,
    /// Channels per attention head; the head count is then channels / this.
    pub num_head_channels: Option<usize>,
    /// Dropout probability inside residual blocks.
    pub dropout: f64,
    /// GroupNorm groups.
    pub groups: usize,
    /// Timestep features.
    pub time_features: TimeFeatures,
    /// Time injection into residual blocks.
    pub time_injection: TimeInjection,
    /// Up/down-sample with residual blocks (BigGAN style) instead of convolutions.
    pub resblock_updown: bool,
    /// Output a variance channel per image channel too (learned Σ_θ).
    pub learn_sigma: bool,
    /// The timestep is multiplied by this before its features are formed.
    pub time_scale: f64,
    /// Class-conditional: a learned embedding of this many classes, plus one "null" class
    /// (index `num_classes`: no condition), added to the time embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Fourier features of the input (Kingma et al. 2021, Appendix C): for each n listed,
    /// sin(2ⁿ·2π·x) and cos(2ⁿ·2π·x) of every channel join the input (n = 7, 8 resolve the
    /// 8-bit grid of [−1, 1]); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fourier_features: Vec<u32>,
    /// GroupNorm ε (PyTorch's 1e-5; diffusers' DDPM checkpoints use 1e-6).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Padding of the stride-2 downsampling convolution: 1 on every side (Ho et al.'s
    /// convolution as in improved-diffusion), or 0: one row and column of zeros at the bottom
    /// and right only (diffusers' `downsample_padding = 0`, the TF original's "SAME").
    #[serde(default = "default_downsample_padding")]
    pub downsample_padding: usize,
    /// Sinusoidal time features as [cos, sin] instead of [sin, cos] (diffusers' flip_sin_to_cos).
    #[serde(default)]
    pub flip_sin_to_cos: bool,
    /// The sinusoidal frequencies are 10000^(−i/(d/2 − freq_shift)) (Ho et al.: 1).
    #[serde(default = "default_freq_shift")]
    pub freq_shift: f64,
    /// Map the input x to 2x − 1 first (diffusers' center_input_sample).
    #[serde(default)]
    pub center_input: bool,
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn default_downsample_padding() -> usize {
    1
}

fn default_freq_shift() -> f64 {
    1.0
}

impl UNetConfig {
    /// About how many values one image's forward pass produces: the inputs and outputs of the
    /// residual blocks at each level (one GroupNorm, activation and convolution each) and the
    /// attention maps. Used to estimate a batch's memory before allocating it.
    pub fn activation_values(&self) -> u64 {
        let mut total = 0u64;
        let heads = |c: usize| self.heads_for(c) as u64;
        for (i, m) in self.channel_mult.iter().enumerate() {
            let res = (self.image_size >> i) as u64;
            let plane = res * res;
            let c = (self.base_channels * m) as u64;
            // Down: num_res_blocks blocks; up: one more, on concatenated (≈ 1.5×) inputs.
            let blocks = self.num_res_blocks as u64 * 2 + 1;
            // A residual block: two (GroupNorm, SiLU, convolution) triples, dropout, the sum.
            total += blocks * 8 * c * plane;
            if self.attention_resolutions.contains(&(res as usize)) {
                total += blocks * (heads(c as usize) * plane * plane * 2 + 5 * c * plane);
            }
        }
        total
    }
}

/// Errors of an impossible network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl UNetConfig {
    /// The `mnist` preset: 1×28×28, ch 32, mult (1, 2, 2), 2 res blocks, attention at 7×7,
    /// GroupNorm with 8 groups, no dropout (1,623,169 parameters).
    pub fn mnist() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            image_size: 28,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: vec![7],
            num_heads: 1,
            num_head_channels: None,
            dropout: 0.0,
            groups: 8,
            time_features: TimeFeatures::Sinusoidal,
            time_injection: TimeInjection::Add,
            resblock_updown: false,
            learn_sigma: false,
            time_scale: 1.0,
            num_classes: None,
            fourier_features: Vec::new(),
            norm_eps: default_norm_eps(),
            downsample_padding: 1,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            center_input: false,
        }
    }

    /// The `cifar10` preset: Ho et al.'s CIFAR-10 model exactly — 3×32×32, ch 128, mult
    /// (1, 2, 2, 2), 2 res blocks, attention at 16×16, 32 groups, dropout 0.1 (35,746,307
    /// parameters).
    pub fn cifar10() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            image_size: 32,
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: vec![16],
            num_heads: 1,
            num_head_channels: None,
            dropout: 0.1,
            groups: 32,
            time_features: TimeFeatures::Sinusoidal,
            time_injection: TimeInjection::Add,
            resblock_updown: false,
            learn_sigma: false,
            time_scale: 1.0,
            num_classes: None,
            fourier_features: Vec::new(),
            norm_eps: default_norm_eps(),
            downsample_padding: 1,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            center_input: false,
        }
    }

    /// The `tiny` preset for tests: 1×8×8, ch 8, mult (1, 2), 1 res block, attention at 4×4,
    /// 4 groups.
    pub fn tiny() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            image_size: 8,
            base_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![4],
            num_heads: 2,
            num_head_channels: None,
            dropout: 0.0,
            groups: 4,
            time_features: TimeFeatures::Sinusoidal,
            time_injection: TimeInjection::Add,
            resblock_updown: false,
            learn_sigma: false,
            time_scale: 1.0,
            num_classes: None,
            fourier_features: Vec::new(),
            norm_eps: default_norm_eps(),
            downsample_padding: 1,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            center_input: false,
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "mnist" => Ok(Self::mnist()),
            "cifar10" => Ok(Self::cifar10()),
            "tiny" => Ok(Self::tiny()),
            other => Err(ConfigError(format!(
                "unknown preset `{other}`; expected mnist, cifar10, tiny (or mlp for 2-D data)"
            ))),
        }
    }

    /// Channels the network outputs.
    pub fn output_channels(&self) -> usize {
        self.out_channels * if self.learn_sigma { 2 } else { 1 }
    }

    /// Heads for an attention block of `channels`.
    pub fn heads_for(&self, channels: usize) -> usize {
        match self.num_head_channels {
            Some(hc) => channels / hc,
            None => self.num_heads,
        }
    }

    /// Checks that the configuration describes a network that can be built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.in_channels == 0 || self.out_channels == 0 || self.base_channels == 0 {
            return err("in_channels, out_channels and base_channels must be positive".into());
        }
        if self.out_channels != self.in_channels {
            return err(format!(
                "out_channels ({}) must equal in_channels ({}): the network predicts ε, x0 or v, \
                 shaped like its input (a learned variance adds its channels through the \
                 variance setting)",
                self.out_channels, self.in_channels
            ));
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return err("channel_mult must be a non-empty list of positive integers".into());
        }
        if self.groups == 0 {
            return err("groups must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(k) = self.num_classes
            && !(1..=100_000).contains(&k)
        {
            return err(format!("num_classes must be in 1..=100000, got {k}"));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return err(format!(
                "norm_eps must be a positive finite number, got {}",
                self.norm_eps
            ));
        }
        if self.downsample_padding > 1 {
            return err(format!(
                "downsample_padding must be 0 (bottom/right only) or 1, got {}",
                self.downsample_padding
            ));
        }
        // f_i = 10000^(−i/(d/2 − freq_shift)) needs d/2 − freq_shift ≥ 1 (the default 1 keeps Ho
        // et al.'s form, which clamps it, for any width).
        let half = (self.base_channels / 2) as f64;
        if !self.freq_shift.is_finite() || (self.freq_shift != 1.0 && half - self.freq_shift < 1.0)
        {
            return err(format!(
                "freq_shift {} must leave base_channels/2 − freq_shift ≥ 1 (base_channels/2 = {half})",
                self.freq_shift
            ));
        }
        if let Some(n) = self.fourier_features.iter().find(|&&n| n > 20) {
            return err(format!(
                "fourier_features: exponent {n} is above 20 (a frequency beyond any float image's \
                 resolution); VDM uses 7 and 8"
            ));
        }
        if !(self.time_scale > 0.0 && self.time_scale.is_finite()) {
            return err(format!(
                "time_scale must be a positive finite number, got {}",
                self.time_scale
            ));
        }
        if let TimeFeatures::Fourier { scale, .. } = self.time_features
            && !(scale > 0.0 && scale.is_finite())
        {
            return err(format!(
                "the Fourier time features' scale must be a positive finite number, got {scale}"
            ));
        }
        // Far beyond any published diffusion U-Net; larger values are typing errors that would
        // otherwise overflow or allocate without bound.
        let widest = self.channel_mult.iter().max().copied().unwrap_or(1);
        if self.image_size > 4096
            || self.num_res_blocks > 64
            || self.base_channels.saturating_mul(widest) > 16384
            || self.in_channels > 64
            || self.out_channels > 64
        {
            return err(format!(
                "the network is out of range (image_size ≤ 4096, num_res_blocks ≤ 64, channels ≤ 16384 \
                 per level, in/out channels ≤ 64): image_size {}, num_res_blocks {}, base_channels {} × {widest}",
                self.image_size, self.num_res_blocks, self.base_channels
            ));
        }
        let mut size = self.image_size;
        for level in 0..self.channel_mult.len() - 1 {
            if size == 0 || !size.is_multiple_of(2) {
                return err(format!(
                    "image size {} cannot be halved {} times: level {} has odd size {size}",
                    self.image_size,
                    self.channel_mult.len() - 1,
                    level + 1
                ));
            }
            size /= 2;
        }
        // Every channel count a GroupNorm or attention block sees.
        let ch = self.base_channels;
        let mut seen = vec![ch];
        let mut skips = vec![ch];
        let mut cur = ch;
        for (i, m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                seen.push(cur);
                cur = ch * m;
                seen.push(cur);
                skips.push(cur);
            }
            if i + 1 < self.channel_mult.len() {
                skips.push(cur);
            }
        }
        for m in self.channel_mult.iter().rev() {
            for _ in 0..=self.num_res_blocks {
                let s = skips.pop().unwrap_or(0);
                seen.push(cur + s);
                cur = ch * m;
                seen.push(cur);
            }
        }
        for c in seen {
            if c % self.groups != 0 {
                return err(format!(
                    "GroupNorm with {} groups cannot normalize {c} channels; choose groups dividing every level's channels",
                    self.groups
                ));
            }
        }
        for (i, m) in self.channel_mult.iter().enumerate() {
            let res = self.image_size >> i;
            if self.attention_resolutions.contains(&res) {
                let c = ch * m;
                let heads = self.heads_for(c);
                if heads == 0 || !c.is_multiple_of(heads) {
                    return err(format!(
                        "attention at {res}×{res} over {c} channels cannot be split into {heads} heads"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The MLP denoiser for 2-D toy data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Data dimension (2 for the toy distributions).
    pub dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Hidden layers.
    pub layers: usize,
    /// Timestep features.
    pub time_features: TimeFeatures,
    /// Output variances too.
    pub learn_sigma: bool,
    /// Class-conditional, as [`UNetConfig::num_classes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            hidden: 128,
            layers: 3,
            time_features: TimeFeatures::Sinusoidal,
            learn_sigma: false,
            num_classes: None,
        }
    }
}
