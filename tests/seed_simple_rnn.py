"""The seed's NumPy ``SimpleRNN``, copied verbatim (the oracle of test_seed_equivalence)."""

import numpy as np


class SimpleRNN:
    def __init__(self, input_size, hidden_size, output_size):
        self.W_xh = np.random.randn(hidden_size, input_size) * 0.01
        self.W_hh = np.random.randn(hidden_size, hidden_size) * 0.01
        self.W_hy = np.random.randn(output_size, hidden_size) * 0.01
        self.b_h = np.zeros((hidden_size, 1))
        self.b_y = np.zeros((output_size, 1))

    def step(self, x_t, h_prev):
        h_t = np.tanh(np.dot(self.W_xh, x_t) + np.dot(self.W_hh, h_prev) + self.b_h)
        y_t = np.dot(self.W_hy, h_t) + self.b_y
        return h_t, y_t

    def forward(self, inputs):
        h = np.zeros((self.W_hh.shape[0], 1))
        hs, ys = [], []
        for x_t in inputs:
            h, y = self.step(x_t, h)
            hs.append(h)
            ys.append(y)
        return hs, ys
