"""Bad input fails early, across the API, with a ValueError/TypeError that names the argument."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
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
    "xs input size": (lambda: unroll(P1, XS[..., :2]), ValueError, r"xs has size 2 on axis 2"),
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
                     r"lengths has size 3"),
    # h0
    "h0 batch": (lambda: unroll(P1, XS, jnp.zeros((1, 3, H))), ValueError,
                 r"h0 has size 3 on axis 1"),
    "h0 layers*directions": (lambda: unroll(P2, XS, jnp.zeros((2, B, H))), ValueError,
                             r"h0 has size 2 on axis 0"),
    "h0 rank": (lambda: unroll(P1, XS, jnp.zeros((B, H))), ValueError, r"h0 must have shape"),
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
                          ValueError, r"batch\.target_mask has size 3"),
    "targets out of range": (lambda: loss(P1, BATCH._replace(targets=TARGETS.at[5, 1].set(O))),
                             ValueError, r"batch\.targets"),
    "targets negative": (lambda: jaxrnn.bptt(P2, BATCH._replace(targets=TARGETS.at[0, 0].set(-1))),
                         ValueError, r"batch\.targets"),
    "targets float": (lambda: loss(P1, BATCH._replace(targets=TARGETS.astype(jnp.float64))),
                      TypeError, r"targets"),
    "real targets size": (lambda: loss(P1, BATCH._replace(targets=jnp.zeros((T, B, O + 1))),
                                       loss=jaxrnn.LossSpec("squared_error")),
                          ValueError, r"batch\.targets has size 3 on axis 2"),
    # specs
    "unknown activation": (lambda: unroll(P1, XS, model=jaxrnn.ModelSpec(activation="sigmoid")),
                           ValueError, r"model\.activation 'sigmoid'"),
    "unknown output activation": (
        lambda: unroll(P2, XS, model=jaxrnn.ModelSpec(output_activation="gelu")), ValueError,
        r"model\.output_activation 'gelu'"),
    "dropout rate 1": (lambda: unroll(P1, XS, model=jaxrnn.ModelSpec(dropout=1.0)), ValueError,
                       r"model\.dropout"),
    "unknown loss": (lambda: loss(P1, BATCH, loss=jaxrnn.LossSpec(loss="hinge")), ValueError,
                     r"loss\.loss 'hinge'"),
    "unknown reduction": (lambda: loss(P1, BATCH, loss=jaxrnn.LossSpec(reduction="max")),
                          ValueError, r"loss\.reduction 'max'"),
    "loss vs output activation": (
        lambda: loss(P1, BATCH, model=jaxrnn.ModelSpec(output_activation="sigmoid")), ValueError,
        r"output_activation 'sigmoid'"),
    "unknown gradient": (lambda: jaxrnn.make_train_step(
        optax.sgd(0.1), compute=jaxrnn.ComputeSpec(gradient="magic")), ValueError,
        r"compute\.gradient 'magic'"),
    "scan_unroll 0": (lambda: loss(P1, BATCH, compute=jaxrnn.ComputeSpec(scan_unroll=0)),
                      ValueError, r"compute\.scan_unroll"),
    "scan_unroll negative": (lambda: unroll(P2, XS, compute=jaxrnn.ComputeSpec(scan_unroll=-2)),
                             ValueError, r"compute\.scan_unroll"),
    "checkpoint_every 0": (lambda: loss(P1, BATCH, compute=jaxrnn.ComputeSpec(checkpoint_every=0)),
                           ValueError, r"compute\.checkpoint_every"),
    "checkpoint_every bidirectional": (
        lambda: loss(P2, BATCH, compute=jaxrnn.ComputeSpec(checkpoint_every=2)), ValueError,
        r"checkpoint_every.*bidirectional"),
    "spec of the wrong kind": (lambda: loss(P1, BATCH, model=jaxrnn.LossSpec()), TypeError,
                               r"model must be a jaxrnn\.ModelSpec"),
    "bptt with a dropout key": (lambda: jaxrnn.loss_and_grad(
        P1, BATCH, compute=jaxrnn.ComputeSpec(gradient="bptt"), key=KEY), ValueError, r"bptt"),
    # make_optimizer
    "learning_rate negative": (lambda: jaxrnn.make_optimizer("adam", -1e-3), ValueError,
                               r"learning_rate"),
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
    "unknown scheme": (lambda: jaxrnn.init_params(KEY, I, H, O, scheme="xavier"), ValueError,
                       r"scheme 'xavier'"),
    "init scale": (lambda: jaxrnn.init_params(KEY, I, H, O, scale=-0.1), ValueError, r"scale"),
    "init integer dtype": (lambda: jaxrnn.init_params(KEY, I, H, O, dtype=jnp.int32), TypeError,
                           r"dtype"),
    "bidirectional not a bool": (lambda: jaxrnn.init_params(KEY, I, H, O, bidirectional="yes"),
                                 TypeError, r"bidirectional"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named(name):
  call, error, pattern = CASES[name]
  with pytest.raises(error, match=pattern):
    call()


@pytest.mark.parametrize("params", [P1, P2], ids=["1-layer", "2-layer-bidirectional"])
def test_masked_steps_may_hold_any_class_index(params):
  """Past a sequence's end and outside ``target_mask`` any value is fine (a -1 pad, say)."""
  lengths, mask = jnp.array([6, 4]), jnp.ones((T, B)).at[1, 0].set(0)
  good = jaxrnn.Batch(XS, jnp.asarray(np.random.default_rng(1).integers(0, O, (T, B))), lengths,
                      mask)
  padded = good._replace(targets=good.targets.at[4:, 1].set(-1).at[1, 0].set(99))
  value, _ = jaxrnn.sequence_loss(params, padded)
  assert np.isfinite(float(value))
  np.testing.assert_allclose(value, jaxrnn.sequence_loss(params, good)[0], rtol=1e-12)


@pytest.mark.parametrize("params", [P1, P2], ids=["1-layer", "2-layer-bidirectional"])
def test_out_of_range_class_on_a_live_step_under_jit_gives_nan(params):
  """Under jit the values cannot be checked; the loss is then NaN, never a plausible number."""
  lengths = jnp.array([6, 4])
  targets = jnp.asarray(np.random.default_rng(2).integers(0, O, (T, B)))
  value = jax.jit(lambda batch: jaxrnn.sequence_loss(params, batch)[0])
  good = jaxrnn.Batch(XS, targets, lengths)
  assert np.isfinite(float(value(good)))
  for bad in (O, -1, 10 ** 6):
    assert np.isnan(float(value(good._replace(targets=targets.at[2, 1].set(bad))))), bad
  # the same index on a dead step changes nothing
  np.testing.assert_allclose(value(good._replace(targets=targets.at[5, 1].set(O))), value(good),
                             rtol=1e-12)
