"""jaxrnn: the Elman RNN as pure JAX functions, with a hand-derived BPTT.

``h_t = act(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = out_act(W_hy h_t + b_y)``,
``L = sum_t L_t(y_t, target_t)``; one model type from one layer to deep
bidirectional stacks. The command-line application lives in :mod:`jaxrnn.app`,
which this library never imports.
"""

from jaxrnn.bptt import bptt
from jaxrnn.cell import rnn_cell
from jaxrnn.diagnostics import GradientFlow, gradient_flow, lyapunov_exponents
from jaxrnn.inference import generate, infer
from jaxrnn.init import init_params
from jaxrnn.interop import from_torch, to_torch
from jaxrnn.losses import sequence_loss
from jaxrnn.pytrees import Batch, CellParams, RNNParams
from jaxrnn.spec import ComputeSpec, InitSpec, LossSpec, ModelSpec
from jaxrnn.tbptt import TBPTTResult, make_tbptt_step, tbptt_epoch
from jaxrnn.timesplit import SplitStats, TimeSplit, split_time
from jaxrnn.train import (FitResult, evaluate, fit, loss_and_grad, make_eval_step, make_optimizer,
                          make_train_step)
from jaxrnn.unroll import Outputs, unroll, unroll_batch_first

__version__ = "0.4.0"
