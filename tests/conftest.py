"""Session setup: on machines without CUDA, Triton's interpreter runs the Triton kernels on CPU.

TRITON_INTERPRET must be set before anything imports triton (setting it later leaves tl.max and
tl.sum broken), and pytest imports this file before any test module. Importing torch does not
import triton. A value set by the caller is kept.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
