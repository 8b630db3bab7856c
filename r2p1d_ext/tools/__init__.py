"""What an installed user runs besides training, on the kernels and the models alone (no
``[train]`` extra): ``export`` (ONNX or a torch.export program, checked against PyTorch),
``check`` (gradcheck, opcheck and the reference, on every device and kernel family this
build has) and ``bench`` (the block and the network against eager PyTorch); the ``r2p1d``
sub-commands of the same names are thin callers (r2p1d_ext/tools/cli.py)."""
