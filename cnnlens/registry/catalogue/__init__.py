"""One module per toolkit: what it is, the methods it brings first, and its (method, backend) pairs.

Imported in this order by :mod:`cnnlens.registry`; the order is the README table's (columns: toolkits,
rows: methods as first declared). Adding a method to a toolkit is one entry in its module here (a
:class:`~cnnlens.registry.schema.MethodSpec` if the method is new, and an
:class:`~cnnlens.registry.schema.Implementation`), then ``cnnlens methods --markdown`` for the README.
"""

