"""Process-wide switches (for tests and benchmarks, not for everyday use)."""

#: Apply the speed-ups that leave every output value unchanged: frozen parameters during a call,
#: backward stopping at the CAM layer, Eigen-CAM's SVD at economy size with the images side by side,
#: and the guided-backprop / deconvolution ReLU rules of Captum, pytorch-grad-cam and FlashTorch as
#: the backward of swapped-in modules instead of the toolkits' own modules and hooks. ``False``
#: runs the toolkits' own code paths, which the equality tests compare against.
OPTIMIZE: bool = True
