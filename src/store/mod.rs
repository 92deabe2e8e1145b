//! What the layers above keep of tensors outside a network: named host tensors and their
//! safetensors files ([`tensors`]), and a module's parameters by name ([`params`]). Knows
//! nothing of training, sampling or the command line.

pub mod params;
pub mod tensors;
