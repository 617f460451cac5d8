"""Bad input fails early, across the API, with a ValueError/TypeError that names the argument."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jaxrnn
import reference
from conftest import random_params

T, B, I, H, O = 6, 2, 3, 5, 2
P1 = random_params(0, (I, H, O))                                        # 1 layer
P2 = random_params(1, (I, H, O), num_layers=2, bidirectional=True)      # 2 layers, bidirectional
XS = jnp.asarray(np.random.default_rng(0).normal(size=(T, B, I)))
TARGETS = jnp.zeros((T, B), jnp.int32)
BATCH = jaxrnn.Batch(XS, TARGETS)
CELL = P1.layers[0][0]
KEY = jax.random.key(0)


def with_cell(params, l, d, **changes):
  """``params`` with ``layers[l][d]`` changed."""
  layers = [list(layer) for layer in params.layers]
  layers[l][d] = layers[l][d]._replace(**changes)
  return params._replace(layers=tuple(tuple(layer) for layer in layers))


unroll = jaxrnn.unroll
loss = jaxrnn.sequence_loss
ADAM = optax.adam(1e-2)
STEP = jaxrnn.make_train_step(ADAM, donate=False)
nan = float("nan")

CASES = {
    # params
    "params a dict": (lambda: unroll(dict(P1._asdict()), XS), TypeError, r"params must be"),
    "params no layers": (lambda: unroll(P1._replace(layers=()), XS), ValueError,
                         r"params\.layers"),
    "params mixed directions": (lambda: unroll(P2._replace(layers=(P2.layers[0],
                                                                   P2.layers[1][:1])), XS),
                                ValueError, r"params\.layers"),
    "params cell a tuple": (lambda: unroll(P1._replace(layers=((tuple(CELL),),)), XS), TypeError,
                            r"CellParams"),
    "params W_hh rows": (lambda: unroll(with_cell(P1, 0, 0, W_hh=CELL.W_hh[:4]), XS), ValueError,
                         r"params\.layers\[0\]\[0\]\.W_hh"),
    "params layer-1 W_xh width": (
        lambda: unroll(with_cell(P2, 1, 1, W_xh=P2.layers[1][1].W_xh[:, :H]), XS), ValueError,
        r"params\.layers\[1\]\[1\]\.W_xh"),
    "params b_h size": (lambda: unroll(with_cell(P2, 1, 0, b_h=jnp.zeros(H + 1)), XS), ValueError,
                        r"params\.layers\[1\]\[0\]\.b_h"),
    "params W_hy width": (lambda: unroll(P2._replace(W_hy=P2.W_hy[:, :H]), XS), ValueError,
                          r"params\.W_hy"),
    "params b_y size": (lambda: unroll(P1._replace(b_y=P1.b_y[:1]), XS), ValueError,
                        r"params\.b_y"),
    "params mixed dtypes": (lambda: unroll(with_cell(P1, 0, 0, b_h=CELL.b_h.astype(jnp.float32)),
                                           XS), TypeError, r"params\.layers\[0\]\[0\]\.b_h"),
    "params integer": (lambda: unroll(P1._replace(W_hy=jnp.zeros((O, H), jnp.int32)), XS),
                       TypeError, r"params\.W_hy"),
    "params NaN": (lambda: unroll(with_cell(P2, 1, 1, W_hh=P2.layers[1][1].W_hh.at[0, 1].set(nan)),
                                  XS), ValueError, r"params\.layers\[1\]\[1\]\.W_hh contains NaN"),
    # xs
    "xs a list": (lambda: unroll(P1, np.asarray(XS).tolist()), TypeError, r"xs must be"),
    "xs rank 2": (lambda: unroll(P1, XS[0]), ValueError, r"xs must have shape \[T, B, I\]"),
    "xs input size": (lambda: unroll(P1, XS[..., :2]), ValueError, r"xs must have shape \[T, B, I\] = \(\*, \*, 3\), got \(6, 2, 2\)"),
    "xs integer": (lambda: unroll(P1, XS.astype(jnp.int32)), TypeError,
                   r"xs must have a floating-point dtype, got int32"),
    "xs float32": (lambda: unroll(P1, XS.astype(jnp.float32)), TypeError, r"xs has dtype float32"),
    "xs NaN": (lambda: unroll(P1, XS.at[1, 1, 1].set(nan)), ValueError, r"xs contains NaN"),
    "batch.xs inf": (lambda: loss(P1, BATCH._replace(xs=XS.at[0, 0, 0].set(jnp.inf))),
                     ValueError, r"batch\.xs contains NaN or inf"),
    # lengths
    "lengths a list": (lambda: unroll(P1, XS, lengths=[6, 2]), TypeError, r"lengths must be"),
    "lengths floats": (lambda: unroll(P1, XS, lengths=jnp.array([6.0, 2.0])), TypeError,
                       r"lengths must have an integer dtype"),
    "lengths above T": (lambda: unroll(P1, XS, lengths=jnp.array([7, 2])), ValueError,
                        r"lengths must lie in \[0, T=6\]"),
    "lengths negative": (lambda: loss(P2, BATCH._replace(lengths=jnp.array([-1, 2]))), ValueError,
                         r"lengths must lie in"),
    "lengths size": (lambda: unroll(P1, XS, lengths=jnp.array([6, 2, 1])), ValueError,
                     r"lengths must have shape \[B\] = \(2,\), got \(3,\)"),
    # h0
    "h0 batch": (lambda: unroll(P1, XS, jnp.zeros((1, 3, H))), ValueError,
                 r"h0 must have shape \[L\*D, B, H\] = \(1, 2, 5\), got \(1, 3, 5\)"),
    "h0 layers*directions": (lambda: unroll(P2, XS, jnp.zeros((2, B, H))), ValueError,
                             r"h0 must have shape \[L\*D, B, H\] = \(4, 2, 5\)"),
    "h0 rank": (lambda: unroll(P1, XS, jnp.zeros((B, H))), ValueError, r"h0 must have shape"),
    "h0 NaN": (lambda: unroll(P2, XS, jnp.zeros((4, B, H)).at[3, 1, 2].set(nan)), ValueError,
               r"h0 contains NaN or inf"),
    "h0 inf": (lambda: unroll(P1, XS, jnp.zeros((1, B, H)).at[0, 0, 0].set(-jnp.inf)), ValueError,
               r"h0 contains NaN or inf"),
    "h0 list": (lambda: unroll(P1, XS, np.zeros((1, B, H)).tolist()), TypeError, r"h0 must be"),
    "h0 float32": (lambda: unroll(P1, XS, jnp.zeros((1, B, H), jnp.float32)), TypeError,
                   r"h0 has dtype float32"),
    "key uint32 of 3": (lambda: unroll(P1, XS, model=jaxrnn.ModelSpec(dropout=0.5),
                                       key=jnp.zeros(3, jnp.uint32)),
                        TypeError, r"key must be a jax\.random key"),
    "temperature that overflows": (
        lambda: jaxrnn.generate(random_params(7, (O, H, O)), KEY, jnp.array([0, 1]), 3,
                                temperature=1e-305), ValueError,
        r"temperature must be a finite number in \(5\.56\d*e-303, inf\), got 1e-305"),
    "key not a key": (lambda: unroll(P1, XS, model=jaxrnn.ModelSpec(dropout=0.5), key=0),
                      TypeError, r"key must be a jax\.random key"),
    "key an array of keys": (lambda: unroll(P1, XS, model=jaxrnn.ModelSpec(dropout=0.5),
                                            key=jax.random.split(KEY, 3)),
                             ValueError, r"key must be one jax\.random key, got an array of keys "
                                         r"of shape \(3,\)"),
    # batch
    "batch a tuple": (lambda: loss(P1, (XS, TARGETS)), TypeError, r"batch must be"),
    "target_mask -1": (lambda: loss(P1, BATCH._replace(target_mask=-jnp.ones((T, B)))),
                       ValueError, r"batch\.target_mask"),
    "target_mask 0.5": (lambda: loss(P2, BATCH._replace(target_mask=jnp.full((T, B), 0.5))),
                        ValueError, r"batch\.target_mask"),
    "target_mask NaN": (lambda: loss(P1, BATCH._replace(target_mask=jnp.ones((T, B)).at[0, 0]
                                                        .set(nan))),
                        ValueError, r"batch\.target_mask"),
    "target_mask shape": (lambda: loss(P1, BATCH._replace(target_mask=jnp.ones((T, B + 1)))),
                          ValueError, r"batch\.target_mask must have shape \[T, B\] = \(6, 2\)"),
    "targets out of range": (lambda: loss(P1, BATCH._replace(targets=TARGETS.at[5, 1].set(O))),
                             ValueError, r"batch\.targets"),
    "targets negative": (lambda: jaxrnn.bptt(P2, BATCH._replace(targets=TARGETS.at[0, 0].set(-1))),
                         ValueError, r"batch\.targets"),
    "targets float": (lambda: loss(P1, BATCH._replace(targets=TARGETS.astype(jnp.float64))),
                      TypeError, r"targets"),
    "real targets size": (lambda: loss(P1, BATCH._replace(targets=jnp.zeros((T, B, O + 1))),
                                       loss=jaxrnn.LossSpec("squared_error")),
                          ValueError, r"batch\.targets must have shape \[T, B, O\] = \(6, 2, 2\)"),
    # specs: a bad field fails where the spec is built
    "unknown activation": (lambda: jaxrnn.ModelSpec(activation="sigmoid"), ValueError,
                           r"model\.activation 'sigmoid'"),
    "unknown output activation": (lambda: jaxrnn.ModelSpec(output_activation="gelu"), ValueError,
                                  r"model\.output_activation 'gelu'"),
    "dropout rate 1": (lambda: jaxrnn.ModelSpec(dropout=1.0), ValueError, r"model\.dropout"),
    "input_dropout negative": (lambda: jaxrnn.ModelSpec(input_dropout=-0.5), ValueError,
                               r"model\.input_dropout"),
    "unknown loss": (lambda: jaxrnn.LossSpec(loss="hinge"), ValueError, r"loss\.loss 'hinge'"),
    "unknown reduction": (lambda: jaxrnn.LossSpec(reduction="max"), ValueError,
                          r"loss\.reduction 'max'"),
    "unknown gradient": (lambda: jaxrnn.ComputeSpec(gradient="magic"), ValueError,
                         r"compute\.gradient 'magic'"),
    "scan_unroll 0": (lambda: jaxrnn.ComputeSpec(scan_unroll=0), ValueError,
                      r"compute\.scan_unroll"),
    "scan_unroll negative": (lambda: jaxrnn.ComputeSpec(scan_unroll=-2), ValueError,
                             r"compute\.scan_unroll"),
    "checkpoint_every 0": (lambda: jaxrnn.ComputeSpec(checkpoint_every=0), ValueError,
                           r"compute\.checkpoint_every"),
    "unknown precision": (lambda: jaxrnn.ComputeSpec(precision="fp8"), ValueError,
                          r"compute\.precision 'fp8'"),
    "unknown recurrence": (lambda: jaxrnn.ComputeSpec(recurrence="cuda"), ValueError,
                           r"compute\.recurrence 'cuda'"),
    "kernel without fused": (lambda: jaxrnn.ComputeSpec(recurrence="kernel", gradient="autodiff"),
                             ValueError, r"compute\.recurrence='kernel' needs gradient='fused'"),
    "compute dtype integer": (lambda: jaxrnn.ComputeSpec(dtype="int32"), TypeError,
                              r"compute\.dtype"),
    "compute dtype unknown": (lambda: jaxrnn.ComputeSpec(dtype="float7"), TypeError,
                              r"compute\.dtype"),
    "compute dtype float8": (lambda: jaxrnn.ComputeSpec(dtype="float8_e4m3fn"), TypeError,
                             r"compute\.dtype must be one of bfloat16, float16, float32, float64"),
    "unknown init scheme": (lambda: jaxrnn.InitSpec("xavier"), ValueError,
                            r"init\.scheme 'xavier'"),
    "glorot with a scale": (lambda: jaxrnn.InitSpec("glorot", 2.0), ValueError,
                            r"init\.scale.*glorot"),
    # specs that disagree with each other or with the model
    "loss vs output activation": (
        lambda: loss(P1, BATCH, model=jaxrnn.ModelSpec(output_activation="sigmoid")), ValueError,
        r"output_activation 'sigmoid'"),
    "checkpoint_every bidirectional": (
        lambda: loss(P2, BATCH, compute=jaxrnn.ComputeSpec(checkpoint_every=2)), ValueError,
        r"checkpoint_every.*bidirectional"),
    "spec of the wrong kind": (lambda: loss(P1, BATCH, model=jaxrnn.LossSpec()), TypeError,
                               r"model must be a jaxrnn\.ModelSpec"),
    "compute a ModelSpec": (lambda: unroll(P2, XS, compute=jaxrnn.ModelSpec()), TypeError,
                            r"compute must be a jaxrnn\.ComputeSpec"),
    "loss a dict": (lambda: loss(P1, BATCH, loss={"loss": "cross_entropy"}), TypeError,
                    r"loss must be a jaxrnn\.LossSpec"),
    "bptt with a dropout key": (lambda: jaxrnn.loss_and_grad(
        P1, BATCH, compute=jaxrnn.ComputeSpec(gradient="bptt"), key=KEY), ValueError, r"bptt"),
    # make_optimizer
    "learning_rate negative": (lambda: jaxrnn.make_optimizer("adam", -1e-3), ValueError,
                               r"learning_rate"),
    "learning_rate 0": (lambda: jaxrnn.make_optimizer("adam", 0.0), ValueError,
                        r"learning_rate must be a finite number in \(0, inf\), got 0\.0"),
    "clip_norm 0": (lambda: jaxrnn.make_optimizer("adam", 1e-3, clip_norm=0.0), ValueError,
                    r"clip_norm must be a finite number in \(0, inf\), got 0\.0"),
    "learning_rate NaN": (lambda: jaxrnn.make_optimizer("sgd", nan), ValueError,
                          r"learning_rate"),
    "learning_rate inf": (lambda: jaxrnn.make_optimizer("sgd", float("inf")), ValueError,
                          r"learning_rate"),
    "clip_norm negative": (lambda: jaxrnn.make_optimizer("adam", 1e-3, clip_norm=-1.0),
                           ValueError, r"clip_norm"),
    "clip_norm NaN": (lambda: jaxrnn.make_optimizer("adam", 1e-3, clip_norm=nan), ValueError,
                      r"clip_norm"),
    "unknown optimizer": (lambda: jaxrnn.make_optimizer("lbfgs-magic"), ValueError,
                          r"optimizer 'lbfgs-magic'"),
    # init_params
    "input_size 0": (lambda: jaxrnn.init_params(KEY, 0, H, O), ValueError, r"input_size"),
    "hidden_size float": (lambda: jaxrnn.init_params(KEY, I, 2.5, O), ValueError, r"hidden_size"),
    "output_size negative": (lambda: jaxrnn.init_params(KEY, I, H, -1), ValueError,
                             r"output_size"),
    "num_layers 0": (lambda: jaxrnn.init_params(KEY, I, H, O, num_layers=0), ValueError,
                     r"num_layers"),
    "unknown scheme": (lambda: jaxrnn.init_params(KEY, I, H, O, init="xavier"), ValueError,
                       r"init\.scheme 'xavier'"),
    "init a dict": (lambda: jaxrnn.init_params(KEY, I, H, O, init={"scale": 0.1}), TypeError,
                    r"init must be a jaxrnn\.InitSpec"),
    "init key an int": (lambda: jaxrnn.init_params(0, I, H, O), TypeError,
                        r"key must be a jax\.random key"),
    "init integer dtype": (lambda: jaxrnn.init_params(KEY, I, H, O, dtype=jnp.int32), TypeError,
                           r"dtype"),
    "init unknown dtype": (lambda: jaxrnn.init_params(KEY, I, H, O, dtype="foo"), TypeError,
                           r"dtype must be one of .*, got 'foo'"),
    "init scale overflows": (lambda: jaxrnn.init_params(KEY, I, H, O, dtype=jnp.float32,
                                                        init=jaxrnn.InitSpec("normal", 1e39)),
                             ValueError, r"init\.scale=1e\+39 overflows float32"),
    "init key an array of keys": (lambda: jaxrnn.init_params(jax.random.split(KEY, 2), I, H, O),
                                  ValueError, r"key must be one jax\.random key, got an array"),
    # steps and loops
    "loss without a read-out": (lambda: loss(P1._replace(W_hy=jnp.zeros((0, H)),
                                                         b_y=jnp.zeros((0,))), BATCH),
                                ValueError, r"params\.W_hy has no rows"),
    "train step batch a tuple": (lambda: STEP(P1, ADAM.init(P1), (XS, TARGETS)), TypeError,
                                 r"batch must be a jaxrnn\.Batch"),
    "train step xs a vector": (lambda: STEP(P1, ADAM.init(P1), BATCH._replace(xs=XS[0, 0])),
                               ValueError, r"batch\.xs must have shape \[T, B, I\]"),
    "eval step batch a tuple": (lambda: jaxrnn.make_eval_step()(P1, (XS, TARGETS)), TypeError,
                                r"batch must be a jaxrnn\.Batch"),
    "train step optimizer a string": (lambda: jaxrnn.make_train_step("adam"), TypeError,
                                      r"optimizer must be an optax\.GradientTransformation"),
    "tbptt step optimizer None": (lambda: jaxrnn.make_tbptt_step(None), TypeError,
                                  r"optimizer must be an optax\.GradientTransformation"),
    "donate a string": (lambda: jaxrnn.make_train_step(ADAM, donate="no"), TypeError,
                        r"donate must be a bool"),
    "mesh 0": (lambda: jaxrnn.loss_and_grad(P1, BATCH, mesh=0), ValueError,
               r"^mesh must be an int >= 1, got 0"),
    "fit under jit": (lambda: jax.jit(lambda p: jaxrnn.fit(p, ADAM.init(p), STEP, [BATCH], 1,
                                                           progress=False))(P1),
                      TypeError, r"fit runs a Python loop"),
    "bidirectional not a bool": (lambda: jaxrnn.init_params(KEY, I, H, O, bidirectional="yes"),
                                 TypeError, r"bidirectional"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name):
  call, error, pattern = CASES[name]
  with pytest.raises(error, match=pattern):
    call()


def test_float64_numpy_params_without_x64_are_named_not_blamed_on_another_array():
  """Without jax_enable_x64, JAX computes float64 NumPy arrays in float32: the message says so
  instead of calling one array of an all-float64 model float32."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), P1)
  with jax.enable_x64(False):
    with pytest.raises(TypeError, match=r"params\.W_hy has dtype float64, which JAX computes in "
                                        r"float32 while jax_enable_x64 is off"):
      unroll(params, np.asarray(XS))


def test_no_h0_is_zeros_for_every_layer_and_direction():
  """``h0=None``: zeros ``[L*D, B, H]`` in the params' dtype; a given h0 comes back as it is."""
  shape = jaxrnn.checks.check_params(P2)
  h0 = jaxrnn.checks.check_h0(None, shape, B, P2.W_hy.dtype)
  chex.assert_trees_all_equal(h0, jnp.zeros((4, B, H), jnp.float64), strict=True)
  given = jnp.arange(4 * B * H, dtype=jnp.float64).reshape(4, B, H)
  chex.assert_trees_all_equal(jaxrnn.checks.check_h0(given, shape, B, jnp.float64), given)


@pytest.mark.parametrize("params", [P1, P2], ids=["1-layer", "2-layer-bidirectional"])
def test_masked_steps_may_hold_any_class_index(params):
  """Past a sequence's end and outside ``target_mask`` any value is fine (a -1 pad, say)."""
  lengths, mask = jnp.array([6, 4]), jnp.ones((T, B)).at[1, 0].set(0)
  good = jaxrnn.Batch(XS, jnp.asarray(np.random.default_rng(1).integers(0, O, (T, B))), lengths,
                      mask)
  padded = good._replace(targets=good.targets.at[4:, 1].set(-1).at[1, 0].set(99))
  value, _ = jaxrnn.sequence_loss(params, padded)
  assert np.isfinite(float(value))
  want, _ = reference.loss(reference.as_numpy(params), XS, good.targets, None, lengths, mask)
  chex.assert_trees_all_close(value, want, rtol=1e-12)


class TestOutOfRangeClassVariants(chex.TestCase):
  """jaxrnn.sequence_loss jitted and not, with a class outside [0, O) on a live step."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("1-layer", P1), ("2-layer-bidirectional", P2))
  def test_raises_eagerly_and_gives_nan_under_jit(self, params):
    """Under jit the values cannot be checked; the loss is then NaN, never a plausible number."""
    lengths = jnp.array([6, 4])
    targets = jnp.asarray(np.random.default_rng(2).integers(0, O, (T, B)))
    value = self.variant(lambda p, batch: jaxrnn.sequence_loss(p, batch)[0])
    good = jaxrnn.Batch(XS, targets, lengths)
    want, _ = reference.loss(reference.as_numpy(params), XS, targets, None, lengths)
    chex.assert_trees_all_close(value(params, good), want, rtol=1e-12)
    for bad in (O, -1, 10 ** 6):
      batch = good._replace(targets=targets.at[2, 1].set(bad))
      if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
        with pytest.raises(ValueError, match=r"batch\.targets"):
          value(params, batch)
      else:
        assert np.isnan(float(value(params, batch))), bad
    # the same index on a dead step changes nothing
    chex.assert_trees_all_close(value(params, good._replace(targets=targets.at[5, 1].set(O))),
                                want, rtol=1e-12)
