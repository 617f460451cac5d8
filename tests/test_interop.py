"""from_torch/to_torch against torch.nn.RNN: the same outputs and final states.

torch is the oracle: 1 and 2 layers, uni- and bidirectional, tanh and relu,
float32 and float64, on packed variable-length batches.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from conftest import MODELS, random_params

torch = pytest.importorskip("torch")

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
T, B, I, H, O = 7, 5, 3, 4, 2
LENGTHS = np.array([7, 3, 5, 1, 6])
unroll = jax.jit(jaxrnn.unroll, static_argnames=("model",))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_packed(rnn, xs, h0, lengths):
  """torch's padded ``output`` and ``h_n`` of a packed batch."""
  packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(xs), torch.tensor(lengths),
                                                   enforce_sorted=False)
  out, h_n = rnn(packed, torch.tensor(h0))
  out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=xs.shape[0])
  return out.detach().numpy(), h_n.detach().numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers,bidirectional", MODELS + [(2, False), (1, True)])
def test_from_torch_matches_torch_forward(num_layers, bidirectional, activation, dtype):
  torch.manual_seed(num_layers + 10 * bidirectional)
  rnn = torch.nn.RNN(I, H, num_layers=num_layers, nonlinearity=activation,
                     bidirectional=bidirectional, dtype=getattr(torch, dtype))
  linear = torch.nn.Linear((2 if bidirectional else 1) * H, O, dtype=getattr(torch, dtype))
  num_states = num_layers * (2 if bidirectional else 1)
  rng = np.random.default_rng(num_layers)
  xs = rng.normal(size=(T, B, I)).astype(dtype)
  h0 = rng.normal(size=(num_states, B, H)).astype(dtype)
  out, h_n = torch_packed(rnn, xs, h0, LENGTHS)
  ys = linear(torch.tensor(out)).detach().numpy()
  ys[np.arange(T)[:, None] >= LENGTHS[None]] = 0               # padding: jaxrnn's ys are zero

  params = jaxrnn.from_torch(rnn.state_dict(), linear.state_dict())
  assert params.W_hy.dtype == jnp.dtype(dtype)
  assert len(params.layers) == num_layers and len(params.layers[0]) == num_states // num_layers
  hs, jys, final = unroll(params, jnp.asarray(xs), jnp.asarray(h0), jnp.asarray(LENGTHS),
                          model=jaxrnn.ModelSpec(activation=activation))
  diffs = {"output": max_diff(hs, out), "h_n": max_diff(final, h_n), "ys": max_diff(jys, ys)}
  print(f"{num_layers} layers, bidirectional={bidirectional}, {activation}, {dtype}: "
        f"max |jaxrnn - torch| = {max(diffs.values()):.3g} {diffs}")
  assert max(diffs.values()) <= TOLERANCE[dtype], diffs


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_batch_first_matches_torch(num_layers, bidirectional):
  torch.manual_seed(0)
  rnn = torch.nn.RNN(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True,
                     dtype=torch.float64)
  linear = torch.nn.Linear((2 if bidirectional else 1) * H, O, dtype=torch.float64)
  xs = np.random.default_rng(0).normal(size=(B, T, I))
  out, h_n = rnn(torch.tensor(xs))
  ys = linear(out)
  params = jaxrnn.from_torch(rnn.state_dict(), linear.state_dict())
  hs, jys, final = jax.jit(jaxrnn.unroll_batch_first)(params, jnp.asarray(xs))
  assert hs.shape == (B, T, out.shape[-1]) and final.shape == tuple(h_n.shape)
  assert max_diff(hs, out.detach().numpy()) < 1e-12
  assert max_diff(jys, ys.detach().numpy()) < 1e-12
  assert max_diff(final, h_n.detach().numpy()) < 1e-12


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_to_torch_round_trip_and_torch_runs_jaxrnn_params(num_layers, bidirectional):
  params = random_params(1, (I, H, O), num_layers, bidirectional)
  rnn_state, linear_state = jaxrnn.to_torch(params)
  back = jaxrnn.from_torch(rnn_state, linear_state)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)) and a.dtype == b.dtype,
                                   back, params))
  suffix = f"_l{num_layers - 1}" + ("_reverse" if bidirectional else "")
  assert np.all(rnn_state[f"bias_hh{suffix}"].numpy() == 0)   # torch's two biases: b_h and 0
  rnn = torch.nn.RNN(I, H, num_layers=num_layers, bidirectional=bidirectional,
                     dtype=torch.float64)
  rnn.load_state_dict(rnn_state)
  linear = torch.nn.Linear((2 if bidirectional else 1) * H, O, dtype=torch.float64)
  linear.load_state_dict(linear_state)
  xs = np.random.default_rng(1).normal(size=(T, B, I))
  out, h_n = rnn(torch.tensor(xs))
  hs, ys, final = unroll(params, jnp.asarray(xs), model=jaxrnn.ModelSpec())
  assert max_diff(hs, out.detach().numpy()) < 1e-12
  assert max_diff(ys, linear(out).detach().numpy()) < 1e-12
  assert max_diff(final, h_n.detach().numpy()) < 1e-12


def test_from_torch_sums_the_two_biases():
  torch.manual_seed(1)
  rnn = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(rnn.state_dict())
  expected = (rnn.bias_ih_l1_reverse + rnn.bias_hh_l1_reverse).detach().numpy()
  assert max_diff(params.layers[1][1].b_h, expected) == 0
  assert params.W_hy.shape == (0, 2 * H) and params.b_y.shape == (0,)   # no readout given


def test_bias_free_model():
  torch.manual_seed(2)
  rnn = torch.nn.RNN(I, H, num_layers=2, bias=False, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(rnn.state_dict())
  assert all(np.all(np.asarray(c.b_h) == 0) for layer in params.layers for c in layer)
  xs = np.random.default_rng(2).normal(size=(T, B, I))
  out, h_n = rnn(torch.tensor(xs))
  hs, _, final = unroll(params, jnp.asarray(xs), model=jaxrnn.ModelSpec())
  assert max_diff(hs, out.detach().numpy()) < 1e-12
  assert max_diff(final, h_n.detach().numpy()) < 1e-12


def state(num_layers=2, bidirectional=True):
  return {k: v.detach().numpy().copy() for k, v in torch.nn.RNN(
      I, H, num_layers=num_layers, bidirectional=bidirectional).state_dict().items()}


def test_bad_keys_and_missing_weights_raise():
  with pytest.raises(ValueError, match="proj_size"):
    jaxrnn.from_torch({**state(), "weight_hr_l0": np.zeros((2, H))})
  with pytest.raises(ValueError, match="unsupported"):
    jaxrnn.from_torch({**state(), "something": np.zeros(3)})
  with pytest.raises(ValueError, match="layers 0..L-1"):
    jaxrnn.from_torch({k: v for k, v in state().items() if "_l0" not in k})
  with pytest.raises(ValueError, match="layers 0..L-1"):
    jaxrnn.from_torch({k: v for k, v in state().items() if not k.endswith("l1_reverse")})
  with pytest.raises(ValueError, match="layers 0..L-1"):
    jaxrnn.from_torch({})
  with pytest.raises(ValueError, match="weight_hh"):
    jaxrnn.from_torch({k: v for k, v in state().items() if k != "weight_hh_l1"})
  with pytest.raises(ValueError, match="weight"):
    jaxrnn.from_torch(state(), {"bias": np.zeros(O, np.float32)})


@pytest.mark.parametrize("keys,name", [
    (("bias_ih_l1", "bias_hh_l1"), "bias_ih_l1"),
    (("weight_hh_l1_reverse",), "layers[1][1].W_hh"),
    (("weight_ih_l1",), "layers[1][0].W_xh"),
    (("bias_ih_l1",), "bias_ih_l1"),
    (("bias_hh_l0_reverse",), "bias_hh_l0_reverse")])
def test_wrong_sizes_raise_naming_the_array(keys, name):
  bad = state()
  for key in keys:
    bad[key] = bad[key][..., :-1]
  with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
    jaxrnn.from_torch(bad)


@pytest.mark.parametrize("key,shape,name", [("bias", (O + 1,), "b_y"),
                                            ("weight", (O, H), "W_hy")])
def test_wrong_readout_sizes_raise_naming_the_array(key, shape, name):
  linear = {"weight": np.zeros((O, 2 * H), np.float32), "bias": np.zeros(O, np.float32)}
  linear[key] = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match=name):
    jaxrnn.from_torch(state(), linear)
