"""The Ascend adapter: the PyTorch engine on Huawei NPUs through torch_npu (see npu.py)."""
