//! Gradient checkpointing of a segment of a network (a decoder block): its forward keeps only its
//! input, and its backward runs the segment again, with a graph, to get the gradients of the input
//! and of the segment's parameters. Activation memory drops from every intermediate tensor of every
//! block to one [batch, seq, hidden] tensor per block, for one more forward per block in backward
//! (torch.utils.checkpoint, as HF's `gradient_checkpointing_enable`).
//!
//! burn 0.21's own checkpointing strategies recompute memory-bound ops only and keep every matmul's
//! inputs, so they cannot give this; the segment is one custom op instead. Its backward step nests a
//! `backward()`, which needs the burn#5193 fix carried in vendor/burn-autodiff.

use core::marker::PhantomData;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{ModuleVisitor, Param};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::{AutodiffBackend, Backend};

/// A segment a network can checkpoint, named by a marker type: its module (with whatever else its
/// forward reads) on any backend, and how it moves between a training backend and its inner one.
pub trait Checkpointable: 'static {
    /// The segment on backend `B`.
    type On<B: Backend>: Clone + Send + core::fmt::Debug + 'static;

    /// # Shapes
    /// - `x`: [batch, seq, hidden] → same
    fn forward<B: Backend>(segment: &Self::On<B>, x: Tensor<B, 3>) -> Tensor<B, 3>;

    /// The segment without autodiff (parameters keep their data; nothing is tracked).
    fn valid<B: AutodiffBackend>(segment: &Self::On<B>) -> Self::On<B::InnerBackend>;

    /// The segment on an autodiff backend again: fresh leaves, trainable where they were.
    fn from_inner<B: AutodiffBackend>(segment: Self::On<B::InnerBackend>) -> Self::On<B>;

    /// Its float parameters in a fixed order (the same on every backend).
    fn params<B: Backend>(segment: &Self::On<B>, visit: &mut ParamTensors<B>);
}

/// Collects float parameters (a [`ModuleVisitor`]).
pub struct ParamTensors<B: Backend>(pub Vec<FloatTensor<B>>);

impl<B: Backend> ModuleVisitor<B> for ParamTensors<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_primitive().tensor());
    }
}

fn params_of<S: Checkpointable, B: Backend>(segment: &S::On<B>) -> Vec<FloatTensor<B>> {
    let mut visit = ParamTensors(Vec::new());
    S::params(segment, &mut visit);
    visit.0
}

/// Parent slots of the op: the input and up to `SLOTS − 1` parameters (a LLaMA block with LoRA on
/// every projection has 2 norms + 7 weights + 3 biases + 14 adapter factors = 26).
pub const SLOTS: usize = 64;

/// The segment's output without a graph inside it; its backward recomputes the segment.
pub(crate) fn checkpointed<S: Checkpointable, B: Backend, C: CheckpointStrategy>(
    segment: &S::On<Autodiff<B, C>>,
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let params = params_of::<S, Autodiff<B, C>>(segment);
    assert!(params.len() < SLOTS, "a checkpointed segment has {} parameters; at most {} fit", params.len(), SLOTS - 1);
    let inner = S::valid::<Autodiff<B, C>>(segment);
    let y = S::forward::<B>(&inner, Tensor::from_primitive(TensorPrimitive::Float(x.primitive.clone())));
    let y = y.into_primitive().tensor();
    // Unused slots hold an untracked node: they neither require nor receive anything.
    let device = B::float_device(&x.primitive);
    let untracked = Tensor::<Autodiff<B, C>, 1>::zeros([1], &device).into_primitive().tensor().node;
    let nodes = core::array::from_fn(|i| match i {
        0 => x.node.clone(),
        i => params.get(i - 1).map_or_else(|| untracked.clone(), |p| p.node.clone()),
    });
    match Recompute::<S>(PhantomData).prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Saved { segment: inner, x: x.primitive }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The op (a marker: `fn() -> S` keeps it Send and Debug whatever `S` is).
struct Recompute<S>(PhantomData<fn() -> S>);

impl<S> core::fmt::Debug for Recompute<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Recompute")
    }
}

/// What the op keeps for backward: its input and the segment (parameters are shared, not copied).
struct Saved<S: Checkpointable, B: Backend> {
    segment: S::On<B>,
    x: FloatTensor<B>,
}

impl<S: Checkpointable, B: Backend> Clone for Saved<S, B> {
    fn clone(&self) -> Self {
        Self { segment: self.segment.clone(), x: self.x.clone() }
    }
}

impl<S: Checkpointable, B: Backend> core::fmt::Debug for Saved<S, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Saved").field("segment", &self.segment).finish_non_exhaustive()
    }
}

impl<S: Checkpointable, B: Backend> Backward<B, SLOTS> for Recompute<S> {
    type State = Saved<S, B>;

    /// dL/dx and dL/dθ of y = f(x; θ) given dL/dy: run f again on a fresh autodiff graph and
    /// backpropagate Σ y·(dL/dy), whose gradients are exactly those.
    fn backward(self, ops: Ops<Self::State, SLOTS>, grads: &mut Gradients, _: &mut Checkpointer) {
        type Nested<B> = Autodiff<B>;
        let grad_y = grads.consume::<B>(&ops.node);
        let Saved { segment, x } = ops.state;
        let mut x = Tensor::<Nested<B>, 3>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(x)));
        if ops.parents[0].is_some() {
            x = x.require_grad();
        }
        let segment = S::from_inner::<Nested<B>>(segment);
        let y = S::forward(&segment, x.clone());
        let grad_y = Tensor::<Nested<B>, 3>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(grad_y)));
        let nested = (y * grad_y).sum().backward();
        if let (Some(parent), Some(g)) = (&ops.parents[0], x.grad(&nested)) {
            grads.register::<B>(parent.id, g.into_primitive().tensor());
        }
        for (slot, param) in ops.parents[1..].iter().zip(params_of::<S, Nested<B>>(&segment)) {
            if let (Some(parent), Some(g)) = (slot, <Nested<B> as burn::tensor::backend::AutodiffBackend>::grad(&param, &nested)) {
                grads.register::<B>(parent.id, g);
            }
        }
    }
}
