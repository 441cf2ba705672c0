"""One file per wrapped toolkit. Each adapter translates inputs, outputs and errors at the boundary of
its toolkit, and nothing else; shared work lives in :mod:`cnnlens.explainer`."""
