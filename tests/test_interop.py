"""from_torch/to_torch against torch.nn.RNN: the same outputs and final states.

torch is the oracle: 1 and 2 layers, uni- and bidirectional, tanh and relu,
float32 and float64, on packed variable-length batches.
"""

import chex
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


def numpy_of(*tensors):
  """torch tensors as NumPy arrays (detached)."""
  return tuple(t.detach().numpy() for t in tensors)


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
  got = unroll(params, jnp.asarray(xs), jnp.asarray(h0), jnp.asarray(LENGTHS),
               model=jaxrnn.ModelSpec(activation=activation))
  chex.assert_trees_all_close(got, jaxrnn.Outputs(out, ys, h_n), rtol=0, atol=TOLERANCE[dtype])
  chex.assert_type(jax.tree.leaves(got), jnp.dtype(dtype))


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
  got = jax.jit(jaxrnn.unroll_batch_first)(params, jnp.asarray(xs))
  want = jaxrnn.Outputs(*numpy_of(out, ys, h_n))
  chex.assert_trees_all_equal_shapes(got, want)
  chex.assert_trees_all_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", MODELS)
def test_to_torch_round_trip_and_torch_runs_jaxrnn_params(num_layers, bidirectional):
  params = random_params(1, (I, H, O), num_layers, bidirectional)
  rnn_state, linear_state = jaxrnn.to_torch(params)
  back = jaxrnn.from_torch(rnn_state, linear_state)
  chex.assert_trees_all_equal_structs(back, params)
  chex.assert_trees_all_equal_dtypes(back, params)
  chex.assert_trees_all_equal(back, params)
  suffix = f"_l{num_layers - 1}" + ("_reverse" if bidirectional else "")
  assert np.all(rnn_state[f"bias_hh{suffix}"].numpy() == 0)   # torch's two biases: b_h and 0
  rnn = torch.nn.RNN(I, H, num_layers=num_layers, bidirectional=bidirectional,
                     dtype=torch.float64)
  rnn.load_state_dict(rnn_state)
  linear = torch.nn.Linear((2 if bidirectional else 1) * H, O, dtype=torch.float64)
  linear.load_state_dict(linear_state)
  xs = np.random.default_rng(1).normal(size=(T, B, I))
  out, h_n = rnn(torch.tensor(xs))
  got = unroll(params, jnp.asarray(xs), model=jaxrnn.ModelSpec())
  chex.assert_trees_all_close(got, jaxrnn.Outputs(*numpy_of(out, linear(out), h_n)), rtol=0,
                              atol=1e-12)


def test_from_torch_sums_the_two_biases():
  torch.manual_seed(1)
  rnn = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(rnn.state_dict())
  expected = (rnn.bias_ih_l1_reverse + rnn.bias_hh_l1_reverse).detach().numpy()
  chex.assert_trees_all_equal(params.layers[1][1].b_h, jnp.asarray(expected))
  assert params.W_hy.shape == (0, 2 * H) and params.b_y.shape == (0,)   # no readout given


def test_bias_free_model():
  torch.manual_seed(2)
  rnn = torch.nn.RNN(I, H, num_layers=2, bias=False, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(rnn.state_dict())
  for layer in params.layers:
    for cell in layer:
      chex.assert_trees_all_equal(cell.b_h, jnp.zeros(H))
  xs = np.random.default_rng(2).normal(size=(T, B, I))
  out, h_n = rnn(torch.tensor(xs))
  hs, _, final = unroll(params, jnp.asarray(xs), model=jaxrnn.ModelSpec())
  chex.assert_trees_all_close((hs, final), numpy_of(out, h_n), rtol=0, atol=1e-12)
  linear = torch.nn.Linear(2 * H, O, bias=False, dtype=torch.float64)  # a bias-free readout too
  params = jaxrnn.from_torch(rnn.state_dict(), linear.state_dict())
  chex.assert_trees_all_equal(params.b_y, jnp.zeros(O, jnp.float64))
  _, ys, _ = unroll(params, jnp.asarray(xs), model=jaxrnn.ModelSpec())
  chex.assert_trees_all_close(ys, numpy_of(linear(out))[0], rtol=0, atol=1e-12)


def state(num_layers=2, bidirectional=True):
  return {k: v.detach().numpy().copy() for k, v in torch.nn.RNN(
      I, H, num_layers=num_layers, bidirectional=bidirectional).state_dict().items()}


def test_bad_keys_and_missing_weights_raise():
  with pytest.raises(ValueError, match="proj_size"):
    jaxrnn.from_torch({**state(), "weight_hr_l0": np.zeros((2, H))})
  with pytest.raises(ValueError, match="unsupported"):
    jaxrnn.from_torch({**state(), "something": np.zeros(3)})
  with pytest.raises(ValueError, match="unsupported .* key 'weight_ih_l00'"):   # not layer 0 again
    jaxrnn.from_torch({**state(), "weight_ih_l00": np.zeros((H, I), np.float32)})
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


def test_from_torch_reads_numpy_arrays_and_converts_the_dtype():
  """Anything with an array interface is read; ``dtype`` casts every array."""
  arrays = state()                                                # float32 NumPy arrays
  params = jaxrnn.from_torch(arrays, dtype=jnp.float64)
  chex.assert_type(jax.tree.leaves(params), jnp.float64)
  chex.assert_trees_all_equal(params.layers[0][1].W_hh,
                              jnp.asarray(arrays["weight_hh_l0_reverse"], jnp.float64))
  chex.assert_trees_all_equal(params.layers[1][0].b_h, jnp.asarray(
      arrays["bias_ih_l1"] + arrays["bias_hh_l1"], jnp.float64))


def test_string_arrays_raise_a_type_error():
  """Well-shaped arrays of strings are not weights."""
  bad = {k: v.astype(str) for k, v in state(1, False).items()}
  with pytest.raises(TypeError):
    jaxrnn.from_torch(bad)


@pytest.mark.parametrize("state_dict", [object(), None, 3, "weight_ih_l0",
                                        [("weight_ih_l0", np.zeros((H, I)))]],
                         ids=["object", "None", "int", "str", "list of pairs"])
def test_a_state_dict_that_is_not_a_mapping_raises_naming_it(state_dict):
  with pytest.raises(TypeError, match="state_dict"):
    jaxrnn.from_torch(state_dict)


@pytest.mark.parametrize("values", [("abc", "def"), (np.zeros((H, I)), "abcd"),
                                    (np.zeros((H, I)), np.float32(0.0))],
                         ids=["strings", "a string weight_hh", "a scalar weight_hh"])
def test_string_or_scalar_values_raise_naming_the_key(values):
  with pytest.raises((TypeError, ValueError), match="weight_"):
    jaxrnn.from_torch(dict(zip(("weight_ih_l0", "weight_hh_l0"), values)))


def test_bfloat16_weights_go_both_ways_exactly():
  """torch's bfloat16 tensors have no NumPy type: from_torch and to_torch keep them bfloat16."""
  params = jaxrnn.init_params(jax.random.key(0), I, H, O, num_layers=2, dtype=jnp.bfloat16)
  rnn_state, linear_state = jaxrnn.to_torch(params)
  assert {t.dtype for t in [*rnn_state.values(), *linear_state.values()]} == {torch.bfloat16}
  back = jaxrnn.from_torch(rnn_state, linear_state)
  chex.assert_trees_all_equal(back, params, strict=True)
  rnn = torch.nn.RNN(I, H, num_layers=2).to(torch.bfloat16)
  chex.assert_type(jax.tree.leaves(jaxrnn.from_torch(rnn.state_dict())), jnp.bfloat16)


def test_traced_weights_and_unknown_dtypes_are_named():
  params = random_params(3, (I, H, O))
  with pytest.raises(TypeError, match="params are traced: .*outside jax.jit"):
    jax.jit(jaxrnn.to_torch)(params)
  with pytest.raises(TypeError, match="weight_ih_l0 is traced"):
    jax.jit(lambda w: jaxrnn.from_torch({"weight_ih_l0": w, "weight_hh_l0": w}))(jnp.ones((H, H)))
  with pytest.raises(TypeError, match="dtype must be one of .*got 'foo'"):
    jaxrnn.from_torch(state(), dtype="foo")
