//! Data parallelism's hooks into the one update path and the one loop.
//!
//! Each rank takes its share of a step's micro-batches ([`my_share`]); the losses are divided by the
//! step's *global* normaliser (every rank computes it from the whole step's batches), so after the
//! gradients are summed across ranks ([`sum_gradients`]) N ranks with micro-batch m take the step one
//! process would take with N·m. The non-finite check, the clip and AdamW run after the sum, on the
//! same bits on every rank, so the ranks stay identical — and [`weights_checksum`] checks it.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Shape, Tensor, TensorData};
use rlhf_dist::World;
use rlhf_runtime::AutodiffBackend;

use crate::error::{Result, TrainError};

/// Rank `rank`'s micro-batches of a step: every `world`-th, starting at its own index. A pure
/// function of the step's batches and (rank, world), so a run resumes onto the same shares.
pub fn my_share<T>(batches: Vec<T>, rank: usize, world: usize) -> Vec<T> {
    batches.into_iter().skip(rank).step_by(world.max(1)).collect()
}

/// Checks that the step's micro-batches split evenly over the ranks (each rank must run as many
/// backward passes as the others, or the collectives would pair up wrongly).
pub fn check_split(batch_size: usize, micro_batch_size: usize, world: usize) -> Result<()> {
    let micro_batches = batch_size / micro_batch_size.max(1);
    if world > 1 && !micro_batches.is_multiple_of(world) {
        return Err(TrainError::Other(format!(
            "train.batch_size ({batch_size}) / train.micro_batch_size ({micro_batch_size}) = {micro_batches} micro-batches per step do not split over {world} ranks: \
             batch_size is the global batch, micro_batch_size is per rank; make batch_size a multiple of {}",
            micro_batch_size * world
        )));
    }
    Ok(())
}

/// A trained parameter as the packing sees it.
struct Trained {
    id: ParamId,
    shape: Shape,
    rank: usize,
}

struct TrainedParams(Vec<Trained>);

impl<B: rlhf_runtime::Backend> ModuleVisitor<B> for TrainedParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.0.push(Trained { id: param.id, shape: value.shape(), rank: D });
        }
    }
}

fn trained<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<Trained> {
    let mut v = TrainedParams(Vec::new());
    model.visit(&mut v);
    v.0
}

fn take_grad<B: AutodiffBackend>(grads: &mut GradientsParams, p: &Trained) -> Option<Vec<f32>> {
    let data = match p.rank {
        1 => grads.remove::<B::InnerBackend, 1>(p.id).map(|t| t.into_data()),
        2 => grads.remove::<B::InnerBackend, 2>(p.id).map(|t| t.into_data()),
        3 => grads.remove::<B::InnerBackend, 3>(p.id).map(|t| t.into_data()),
        _ => None,
    }?;
    Some(data.convert::<f32>().into_vec::<f32>().expect("f32 gradient"))
}

fn put_grad<B: AutodiffBackend>(grads: &mut GradientsParams, p: &Trained, values: &[f32], device: &B::Device) {
    let data = TensorData::new(values.to_vec(), p.shape.clone());
    match p.rank {
        1 => grads.register(p.id, Tensor::<B::InnerBackend, 1>::from_data(data, device)),
        2 => grads.register(p.id, Tensor::<B::InnerBackend, 2>::from_data(data, device)),
        3 => grads.register(p.id, Tensor::<B::InnerBackend, 3>::from_data(data, device)),
        _ => {}
    }
}

/// What one gradient sum across ranks moved and took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientSum {
    /// Bytes of gradient this rank sent into the sum (f32 values of every trained parameter).
    pub bytes: usize,
    /// Wall time of the whole exchange: device → host, the collectives, host → device.
    pub secs: f64,
}

/// Sums every trained parameter's gradient over the ranks (one buffer, parameters in the module's
/// own order), and the step's loss with them; returns the summed loss. A parameter without a
/// gradient on some rank counts as zero there and keeps no gradient if no rank has one, as in one
/// process (AdamW then leaves it alone).
pub fn sum_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(world: &World, model: &M, grads: &mut GradientsParams, loss: f64, device: &B::Device) -> (f64, GradientSum) {
    let clock = std::time::Instant::now();
    let params = trained::<B, M>(model);
    let sizes: Vec<usize> = params.iter().map(|p| p.shape.num_elements()).collect();
    let mut flat = Vec::with_capacity(sizes.iter().sum());
    // Which parameters had a gradient here, and the loss: summed in f64.
    let mut counts = Vec::with_capacity(params.len() + 1);
    for (p, &n) in params.iter().zip(&sizes) {
        match take_grad::<B>(grads, p) {
            Some(g) => {
                flat.extend_from_slice(&g);
                counts.push(1.0);
            }
            None => {
                flat.resize(flat.len() + n, 0.0);
                counts.push(0.0);
            }
        }
    }
    counts.push(loss);
    world.sum_f32(&mut flat);
    world.sum_f64(&mut counts);
    let mut at = 0;
    for ((p, &n), &count) in params.iter().zip(&sizes).zip(&counts) {
        if count > 0.0 {
            put_grad::<B>(grads, p, &flat[at..at + n], device);
        }
        at += n;
    }
    (counts[params.len()], GradientSum { bytes: flat.len() * 4, secs: clock.elapsed().as_secs_f64() })
}

/// A checksum of every float parameter's bits (trained or not), in the module's order.
pub fn weights_checksum<B: rlhf_runtime::Backend, M: burn::module::Module<B>>(model: &M) -> u64 {
    struct Sum<'a>(crc::Digest<'a, u64>);
    impl<B: rlhf_runtime::Backend> ModuleVisitor<B> for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data();
            self.0.update(&data.bytes);
        }
    }
    const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);
    let mut sum = Sum(CRC.digest());
    model.visit(&mut sum);
    sum.0.finalize()
}

/// Refuses to go on when the ranks' weights differ (checked after the first step and at every
/// checkpoint): their updates would no longer be one model's.
pub fn check_replicas<B: rlhf_runtime::Backend, M: burn::module::Module<B>>(world: &World, model: &M, name: &str, step: usize) -> Result<()> {
    if !world.is_distributed() {
        return Ok(());
    }
    let sum = weights_checksum::<B, M>(model);
    if world.all_equal(sum) {
        Ok(())
    } else {
        Err(TrainError::Other(format!(
            "after step {step} the ranks' {name} weights differ (rank {} has checksum {sum:016x}); every rank must start from the same weights and data",
            world.rank()
        )))
    }
}

/// [`rlhf_model::export`] on rank 0 alone (the final model is written once); the other ranks wait
/// until it is in place and keep their model as it is.
pub fn export_final<B: rlhf_runtime::Backend, M: rlhf_model::StageModel<B>>(model: M, out: &std::path::Path, e: &rlhf_model::Export) -> anyhow::Result<M> {
    let world = rlhf_dist::world();
    if !world.is_writer() {
        world.barrier();
        return Ok(model);
    }
    let model = rlhf_model::export(model, out, e)?;
    world.barrier();
    Ok(model)
}

/// Refuses a data-parallel launch of a stage that does not split its work over ranks yet (every
/// rank would repeat the same rollouts and the summed update would count them N times).
pub fn single_process_only(stage: &str) -> anyhow::Result<()> {
    let world = rlhf_dist::world();
    if world.is_distributed() {
        anyhow::bail!("{stage} does not run data-parallel yet ({} ranks were started): run it as one process (docs/distributed.md)", world.size());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_takes_every_worlds_micro_batch() {
        let batches = vec!["a", "b", "c", "d"];
        assert_eq!(my_share(batches.clone(), 0, 1), ["a", "b", "c", "d"]);
        assert_eq!(my_share(batches.clone(), 0, 2), ["a", "c"]);
        assert_eq!(my_share(batches, 1, 2), ["b", "d"]);
    }

    #[test]
    fn the_micro_batches_must_split_evenly() {
        assert!(check_split(8, 2, 2).is_ok());
        assert!(check_split(8, 2, 1).is_ok());
        let e = check_split(6, 2, 2).unwrap_err().to_string();
        assert!(e.contains("3 micro-batches") && e.contains("2 ranks") && e.contains("multiple of 4"), "{e}");
    }

    #[test]
    fn one_process_sums_to_itself() {
        use burn::module::Module;
        type AD = rlhf_runtime::CpuTrain;
        #[derive(Module, Debug)]
        struct Two<B: rlhf_runtime::Backend> {
            a: Param<Tensor<B, 2>>,
            frozen: Param<Tensor<B, 1>>,
        }
        let d = Default::default();
        let m = Two::<AD> {
            a: Param::from_tensor(Tensor::from_floats([[1.0, 2.0], [3.0, 4.0]], &d)),
            frozen: Param::from_tensor(Tensor::<AD, 1>::from_floats([5.0], &d)).set_require_grad(false),
        };
        let loss = (m.a.val() * m.a.val()).sum() + m.frozen.val().sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        assert_eq!(trained::<AD, _>(&m).len(), 1, "the frozen parameter is not sent");
        let (total, sum) = sum_gradients::<AD, _>(rlhf_dist::world(), &m, &mut grads, 2.5, &d);
        assert_eq!((total, sum.bytes), (2.5, 4 * 4));
        let g = grads.get::<rlhf_runtime::Cpu, 2>(m.a.id).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g, [2.0, 4.0, 6.0, 8.0]);
        assert_eq!(weights_checksum::<AD, _>(&m), weights_checksum::<AD, _>(&m.clone()));
        assert!(check_replicas::<AD, _>(rlhf_dist::world(), &m, "toy", 1).is_ok());
    }
}
