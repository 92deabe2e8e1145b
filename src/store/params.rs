//! Parameters by name: collecting them from a module and putting values back.
//!
//! Names are the module paths (`down.0.stages.1.res.conv1.weight`), stable across runs and
//! processes, so optimizer state, EMA weights and checkpoints are keyed by them.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use super::tensors::HostTensor;

/// A named tensor flattened to 1-D, with its original shape.
#[derive(Debug, Clone)]
pub struct Named {
    /// Flattened values (on the module's device, without autodiff).
    pub value: Tensor<1>,
    /// The parameter's shape.
    pub shape: Vec<usize>,
}

struct Collector<'a, F: FnMut(&str, &Tensor<1>, Vec<usize>, burn::module::ParamId)> {
    path: Vec<String>,
    f: &'a mut F,
}

impl<F: FnMut(&str, &Tensor<1>, Vec<usize>, burn::module::ParamId)> ModuleVisitor
    for Collector<'_, F>
{
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let flat = t.reshape([-1]);
        (self.f)(&self.path.join("."), &flat, shape, param.id);
    }
}

/// Calls `f(name, flat value, shape, id)` for every float parameter, in module order.
pub fn visit_params<M: Module>(
    module: &M,
    mut f: impl FnMut(&str, &Tensor<1>, Vec<usize>, burn::module::ParamId),
) {
    let mut c = Collector {
        path: Vec::new(),
        f: &mut f,
    };
    module.visit(&mut c);
}

/// Every float parameter by name (values detached from autodiff).
pub fn named_params<M: Module>(module: &M) -> BTreeMap<String, Named> {
    let mut out = BTreeMap::new();
    visit_params(module, |name, t, shape, _| {
        out.insert(
            name.to_string(),
            Named {
                value: t.clone().inner(),
                shape,
            },
        );
    });
    out
}

/// Replaces parameter values by name through `f(name, current) -> new`; the parameter keeps its
/// id, device and whether it requires a gradient.
pub struct Replacer<'a, F: FnMut(&str, Tensor<1>) -> Tensor<1>> {
    path: Vec<String>,
    f: &'a mut F,
}

impl<F: FnMut(&str, Tensor<1>) -> Tensor<1>> ModuleMapper for Replacer<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        let require_grad = tensor.is_require_grad();
        // `Tensor::from_inner` would put every value under autodiff: a model loaded for
        // inference would then record a graph step per operation that no backward ever frees
        // (memory growing with every network call).
        let autodiff = tensor.is_autodiff();
        let device = tensor.device();
        let new = (self.f)(&name, tensor.inner().reshape([-1]));
        let mut new: Tensor<D> = new.reshape(shape);
        if autodiff {
            new = new.autodiff();
        }
        if new.device() != device {
            new = new.to_device(&device);
        }
        if require_grad {
            new = new.require_grad();
        }
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Applies `f(name, flat value) -> flat value` to every float parameter of `module`.
pub fn map_params<M: Module>(module: M, mut f: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    let mut r = Replacer {
        path: Vec::new(),
        f: &mut f,
    };
    module.map(&mut r)
}

struct GradCollector<'a> {
    path: Vec<String>,
    grads: &'a burn::tensor::Gradients,
    out: BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.insert(self.path.join("."), g.reshape([-1]));
        }
    }
}

/// The gradient of every parameter that has one, by name, flattened.
pub fn named_grads<M: Module>(
    module: &M,
    grads: &burn::tensor::Gradients,
) -> BTreeMap<String, Tensor<1>> {
    let mut c = GradCollector {
        path: Vec::new(),
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Model weights by name as host tensors.
pub fn host_params<M: Module>(model: &M) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    visit_params(model, |name, t, shape, _| {
        out.insert(name.to_string(), HostTensor::from_tensor(t, shape));
    });
    out
}

/// Loads named host tensors into a model; every parameter must be present with its shape.
pub fn load_params<M: Module>(
    model: M,
    tensors: &BTreeMap<String, HostTensor>,
    source: &str,
    device: &Device,
) -> Result<M> {
    let mut problem: Option<String> = None;
    let mut expected = BTreeMap::new();
    visit_params(&model, |name, _, shape, _| {
        expected.insert(name.to_string(), shape);
    });
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => {
                problem.get_or_insert(format!(
                    "{source}: parameter {name} is missing (a checkpoint of another configuration?)"
                ));
            }
            Some(t) if &t.shape != shape => {
                problem.get_or_insert(format!(
                    "{source}: parameter {name} has shape {:?}, the model expects {:?} (a checkpoint of another configuration?)",
                    t.shape, shape
                ));
            }
            _ => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !expected.contains_key(*k)) {
        problem.get_or_insert(format!("{source}: holds {extra}, which the model does not have (a checkpoint of another configuration?)"));
    }
    if let Some(p) = problem {
        bail!(p);
    }
    Ok(map_params(model, |name, _| tensors[name].to_tensor(device)))
}

/// Flat tensors by name as host tensors, each name prefixed by `prefix`.
pub fn to_host_map(m: &BTreeMap<String, Tensor<1>>, prefix: &str) -> BTreeMap<String, HostTensor> {
    m.iter()
        .map(|(k, t)| {
            (
                format!("{prefix}{k}"),
                HostTensor::from_tensor(t, vec![t.dims()[0]]),
            )
        })
        .collect()
}

/// The host tensors whose names start with `prefix`, without it, as flat tensors on `device`.
pub fn from_host_map(
    m: &BTreeMap<String, HostTensor>,
    prefix: &str,
    device: &Device,
) -> BTreeMap<String, Tensor<1>> {
    m.iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(prefix)
                .map(|n| (n.to_string(), t.to_tensor(device)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    use super::*;

    /// Replacing values keeps each parameter as it was: plain on an inference model (an
    /// autodiff value there would record a graph step per operation that no backward frees),
    /// tracked on a training model.
    #[test]
    fn replaced_values_keep_autodiff_and_require_grad_as_they_were() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let model: Linear = LinearConfig::new(3, 2).init(&device);
            let before = visit_flags(&model);
            let model = map_params(model, |_, t| t.add_scalar(1.0));
            assert_eq!(visit_flags(&model), before, "on {device:?}");
            let autodiff = device.gradient_checkpointing_strategy().is_some();
            assert!(before.iter().all(|&(a, r)| a == autodiff && r == autodiff));
        }
    }

    /// (autodiff, require_grad) of every float parameter, in module order.
    fn visit_flags<M: Module>(m: &M) -> Vec<(bool, bool)> {
        struct Flags(Vec<(bool, bool)>);
        impl ModuleVisitor for Flags {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let t = param.val();
                self.0.push((t.is_autodiff(), t.is_require_grad()));
            }
        }
        let mut flags = Flags(Vec::new());
        m.visit(&mut flags);
        assert_eq!(flags.0.len(), 2, "weight and bias");
        flags.0
    }
}
