"""CPU: C kernels built on first use (`build.py`, sources in `csrc/`) and oneDNN-packed linears."""
