"""Plain torch ops: the path of any device without kernels, and the kernels' reference."""
