"""The cut: balanced truncation of live SSM layers as a short pipeline of named steps.

:func:`adapters.torch.compress_` (in :mod:`adapters.torch.compress`) runs them in order:

1. :mod:`.plan` checks the options and finds the layers, then chooses each layer's new order;
2. :mod:`.compute` balances the layers' systems (one batched core call per group of equal-shaped layers)
   and computes every reduced system before anything changes;
3. :mod:`.apply` loads them into the layers and keeps the optimizer consistent, undoing everything on failure;
4. :mod:`.certify` measures what the cut did (the output change, and the H-infinity figures on request).

:mod:`.report` holds what the call returns, :mod:`._guards` the checks for what real training stacks hold.
"""
