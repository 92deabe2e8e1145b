//! The configuration's choices among names (`loss = "hybrid"`, `t_sampler = "uniform"`, …) as
//! types: parsed once, when a flag or `config.toml` is read, with an error naming the flag and
//! the accepted names; written back with the same spelling, so run directories keep loading.

use serde::{Deserialize, Serialize};

use crate::vdm::Time;

/// A choice among fixed names, read and written as its name.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident, $flag:literal, $what:literal, $expected:literal,
     { $($(#[$vdoc:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $var),+
        }

        impl $name {
            /// The name as flags and `config.toml` spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$var => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$var),)+
                    other => Err(format!(
                        "{}: unknown {} `{other}`; expected {}",
                        $flag, $what, $expected
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_string()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(
    /// The training objective on the DDPM chain (`loss`).
    LossName, "--loss", "loss", "simple, vlb or hybrid", {
        /// L_simple: ‖ε − ε_θ‖² (Ho et al. eq. 14).
        Simple = "simple",
        /// The variational bound.
        Vlb = "vlb",
        /// L_simple + λ·L_vlb (Nichol & Dhariwal).
        Hybrid = "hybrid",
    }
);

named!(
    /// The weighting of the MSE term over timesteps (`weighting`).
    WeightingName, "--weighting", "weighting", "none, vlb, p2 or min-snr", {
        /// Every timestep alike.
        None = "none",
        /// The bound's own weights.
        Vlb = "vlb",
        /// Perception-prioritized weights 1/(k + SNR)^γ (Choi et al. 2022).
        P2 = "p2",
        /// min(SNR, γ)/SNR (Hang et al. 2023).
        MinSnr = "min-snr",
    }
);

named!(
    /// What a run trains (`--objective`; `config.toml` records it as the presence of `[edm]`).
    ObjectiveName, "--objective", "objective", "ddpm or edm", {
        /// Ho et al.'s chain with `loss` (or VDM's bound with `time`).
        Ddpm = "ddpm",
        /// EDM's preconditioned denoiser (Karras et al. 2022).
        Edm = "edm",
    }
);

named!(
    /// How training timesteps are drawn (`t_sampler`).
    TimestepSamplerName, "--t-sampler", "sampler", "uniform or loss-second-moment", {
        /// Uniform over the chain (Algorithm 1).
        Uniform = "uniform",
        /// Importance sampling by each step's loss history (Nichol & Dhariwal §3.3).
        LossSecondMoment = "loss-second-moment",
    }
);

/// The time a run trains in (`time`): the DDPM chain, or VDM's continuous or discrete time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeChoice {
    /// `discrete`: the DDPM chain of `timesteps` steps, with `loss`.
    Chain,
    /// `continuous` or `discrete:T`: VDM's losses.
    Vdm(Time),
}

impl TimeChoice {
    /// VDM's time, or `None` for the DDPM chain.
    pub fn vdm(self) -> Option<Time> {
        match self {
            Self::Chain => None,
            Self::Vdm(t) => Some(t),
        }
    }
}

impl std::str::FromStr for TimeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match Time::parse(s) {
            Ok(Some(t)) => Ok(Self::Vdm(t)),
            Ok(None) => Ok(Self::Chain),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl TryFrom<String> for TimeChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TimeChoice> for String {
    fn from(v: TimeChoice) -> String {
        v.to_string()
    }
}

impl std::fmt::Display for TimeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Chain => f.write_str("discrete"),
            Self::Vdm(Time::Continuous) => f.write_str("continuous"),
            Self::Vdm(Time::Discrete(t)) => write!(f, "discrete:{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_written_and_unknown_ones_name_the_flag() {
        for s in ["simple", "vlb", "hybrid"] {
            assert_eq!(s.parse::<LossName>().unwrap().as_str(), s);
        }
        for s in ["none", "vlb", "p2", "min-snr"] {
            assert_eq!(s.parse::<WeightingName>().unwrap().to_string(), s);
        }
        for s in ["uniform", "loss-second-moment"] {
            assert_eq!(String::from(s.parse::<TimestepSamplerName>().unwrap()), s);
        }
        for s in ["discrete", "continuous", "discrete:10"] {
            assert_eq!(s.parse::<TimeChoice>().unwrap().to_string(), s);
        }
        let e = "l2".parse::<LossName>().unwrap_err();
        assert!(
            e.contains("--loss") && e.contains("`l2`") && e.contains("hybrid"),
            "{e}"
        );
        let e = "sometimes".parse::<TimeChoice>().unwrap_err();
        assert!(e.contains("--time") && e.contains("sometimes"), "{e}");
        assert_eq!(
            "discrete:10".parse::<TimeChoice>().unwrap().vdm(),
            Some(Time::Discrete(10))
        );
        assert_eq!("discrete".parse::<TimeChoice>().unwrap().vdm(), None);
    }
}
