"""jaxrnn: the Elman RNN as pure JAX functions, with a hand-derived BPTT.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``,
``L = sum_t L_t(y_t, target_t)``.
"""

from jaxrnn.bptt import bptt, output_delta
from jaxrnn.cell import ACTIVATIONS, OUTPUT_ACTIVATIONS, rnn_cell
from jaxrnn.diagnostics import GradientFlow, gradient_flow, jacobian_norms, step_jacobians
from jaxrnn.init import SCHEMES, RNNParams, init_params
from jaxrnn.interop import from_torch, to_torch
from jaxrnn.losses import LOSSES, REDUCTIONS, sequence_loss, step_losses
from jaxrnn.recurrence import lengths_to_mask
from jaxrnn.stacked import (MERGES, LayerParams, StackedOutputs, StackedParams, final_state,
                             init_stacked, stacked_loss, unroll_stacked,
                             unroll_stacked_batch_first)
from jaxrnn.tbptt import TBPTTResult, tbptt_chunks, tbptt_epoch, tbptt_grad
from jaxrnn.train import (GRADIENTS, OPTIMIZERS, Batch, FitResult, LossSpec, evaluate, fit,
                          loss_and_grad, make_eval_step, make_optimizer, make_train_step)
from jaxrnn.unroll import unroll, unroll_batch_first

__version__ = "0.1.0"
