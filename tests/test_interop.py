"""jaxrnn against torch.nn.RNN: same outputs, final states and gradients.

torch is the oracle: for tanh and relu, 1-3 layers, uni- and bidirectional,
on packed variable-length batches, ``from_torch`` of a torch model must give
torch's ``output`` and ``h_n`` and torch autograd's gradients, to 1e-5 in
float32 and 1e-10 in float64.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

torch = pytest.importorskip(
    "torch", reason="the interop tests need torch (pip install 'jaxrnn[torch]', torch==2.13.0)")

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
T, B, I, H = 7, 5, 3, 4
LENGTHS = np.array([7, 3, 5, 1, 6])


def torch_run(rnn, xs, h0, lengths, r, s):
  """torch's ``output``, ``h_n`` and gradients of ``<output, r> + <h_n, s>`` for a packed batch."""
  xs_t = torch.tensor(xs, requires_grad=True)
  h0_t = torch.tensor(h0, requires_grad=True)
  packed = torch.nn.utils.rnn.pack_padded_sequence(xs_t, torch.tensor(lengths),
                                                   enforce_sorted=False)
  out_packed, h_n = rnn(packed, h0_t)
  out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, total_length=xs.shape[0])
  rnn.zero_grad()
  (torch.sum(out * torch.tensor(r)) + torch.sum(h_n * torch.tensor(s))).backward()
  grads = {name: p.grad.numpy() for name, p in rnn.named_parameters()}
  return out.detach().numpy(), h_n.detach().numpy(), grads, xs_t.grad.numpy(), h0_t.grad.numpy()


@functools.partial(jax.jit, static_argnums=6)
def jax_run(params, xs, h0, lengths, r, s, activation):
  """jaxrnn's ``hs``, ``final`` and gradients of ``<hs, r> + <final, s>`` (params, xs, h0)."""
  def objective(params, xs, h0):
    hs, _, final = jaxrnn.unroll_stacked(params, xs, h0, lengths, activation)
    return jnp.sum(hs * r) + jnp.sum(final * s), (hs, final)
  (_, (hs, final)), grads = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
      params, xs, h0)
  return hs, final, grads


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation,num_layers,bidirectional",
                         list(itertools.product(["tanh", "relu"], [1, 2, 3], [False, True])))
def test_matches_torch(activation, num_layers, bidirectional, dtype):
  torch.manual_seed(num_layers + 10 * bidirectional)
  rnn = torch.nn.RNN(I, H, num_layers=num_layers, nonlinearity=activation,
                     bidirectional=bidirectional, dtype=getattr(torch, dtype))
  num_dirs = 2 if bidirectional else 1
  rng = np.random.default_rng(num_layers)
  xs = rng.normal(size=(T, B, I)).astype(dtype)
  h0 = rng.normal(size=(num_layers * num_dirs, B, H)).astype(dtype)
  r = rng.normal(size=(T, B, num_dirs * H)).astype(dtype)
  s = rng.normal(size=(num_layers * num_dirs, B, H)).astype(dtype)
  out, h_n, torch_grads, dxs, dh0 = torch_run(rnn, xs, h0, LENGTHS, r, s)

  params = jaxrnn.from_torch(rnn.state_dict())
  assert params.W_hy.dtype == jnp.dtype(dtype)
  hs, final, (grads, jdxs, jdh0) = jax_run(params, jnp.asarray(xs), jnp.asarray(h0),
                                           jnp.asarray(LENGTHS), r, s, activation)

  diffs = {"output": max_diff(hs, out), "h_n": max_diff(final, h_n),
           "d xs": max_diff(jdxs, dxs), "d h0": max_diff(jdh0, dh0)}
  for l, layer in enumerate(grads.layers):
    for d, g in enumerate(layer):
      suffix = f"_l{l}" + ("_reverse" if d else "")
      diffs[f"d weight_ih{suffix}"] = max_diff(g.W_xh, torch_grads[f"weight_ih{suffix}"])
      diffs[f"d weight_hh{suffix}"] = max_diff(g.W_hh, torch_grads[f"weight_hh{suffix}"])
      diffs[f"d bias_ih{suffix}"] = max_diff(g.b_h, torch_grads[f"bias_ih{suffix}"])
      diffs[f"d bias_hh{suffix}"] = max_diff(g.b_h, torch_grads[f"bias_hh{suffix}"])
  worst = max(diffs, key=diffs.get)
  print(f"max |jaxrnn - torch| = {diffs[worst]:.3g} ({worst})")
  assert diffs[worst] <= TOLERANCE[dtype], diffs


def test_batch_first_and_linear_readout_match_torch():
  torch.manual_seed(0)
  rnn = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, batch_first=True,
                     dtype=torch.float64)
  linear = torch.nn.Linear(2 * H, 3, dtype=torch.float64)
  xs = np.random.default_rng(0).normal(size=(B, T, I))
  out, h_n = rnn(torch.tensor(xs))
  ys = linear(out)
  params = jaxrnn.from_torch(rnn.state_dict(), linear.state_dict())
  hs, jys, final = jax.jit(jaxrnn.unroll_stacked_batch_first)(params, jnp.asarray(xs))
  assert max_diff(hs, out.detach().numpy()) < 1e-12
  assert max_diff(jys, ys.detach().numpy()) < 1e-12
  assert max_diff(final, h_n.detach().numpy()) < 1e-12


def test_to_torch_round_trip_and_bias_convention():
  torch.manual_seed(1)
  source = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(source.state_dict())
  rnn_state, linear_state = jaxrnn.to_torch(params)
  assert np.all(rnn_state["bias_hh_l1_reverse"].numpy() == 0)
  assert max_diff(rnn_state["bias_ih_l1_reverse"].numpy(),
                  source.bias_ih_l1_reverse.detach() + source.bias_hh_l1_reverse.detach()) == 0
  back = jaxrnn.from_torch(rnn_state, linear_state)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, params))

  rnn = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
  rnn.load_state_dict(rnn_state)
  xs = np.random.default_rng(1).normal(size=(T, B, I))
  out, h_n = rnn(torch.tensor(xs))
  expected, expected_n = source(torch.tensor(xs))
  assert max_diff(out.detach().numpy(), expected.detach().numpy()) < 1e-12
  assert max_diff(h_n.detach().numpy(), expected_n.detach().numpy()) < 1e-12


def test_bias_free_model_and_bad_keys():
  rnn = torch.nn.RNN(I, H, bias=False, bidirectional=True, dtype=torch.float64)
  params = jaxrnn.from_torch(rnn.state_dict())
  assert np.all(np.asarray(params.layers[0][1].b_h) == 0)
  with pytest.raises(ValueError, match="proj_size"):
    jaxrnn.from_torch({"weight_hr_l0": np.zeros((2, 4))})
  with pytest.raises(ValueError, match="layers 0..L-1"):
    jaxrnn.from_torch({k: v for k, v in torch.nn.RNN(I, H, num_layers=2).state_dict().items()
                       if "l0" not in k})
  sum_merged = params._replace(W_hy=jnp.zeros((0, H)))                  # merge="sum" shapes
  with pytest.raises(ValueError, match="merge='concat'"):
    jaxrnn.to_torch(sum_merged)
