"""Kernel tests run on the GPU when there is one, else on CPU tensors through Triton's
interpreter, which must be switched on before anything imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
