"""Process-wide switches (for tests and benchmarks, not for everyday use)."""

#: Apply the speed-ups that leave every output value unchanged: frozen parameters during a call,
#: backward stopping at the CAM layer, batched guided backprop. ``False`` runs the toolkits the way
#: their own documentation calls them, which benchmarks/perf.py and the equality tests compare against.
OPTIMIZE: bool = True
