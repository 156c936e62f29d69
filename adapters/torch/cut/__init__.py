"""The cut: balanced truncation of live SSM layers, as a short pipeline of named steps.

:func:`adapters.torch.compress_` (:mod:`adapters.torch.compress`) calls them in this order:

1. :func:`.plan.check_call`, :func:`.plan.find_layers`: check every argument, find the layers to cut;
2. :func:`.compute.balance_layers`: each layer's system, balanced by one batched core call per group of
   equal-shaped layers (the HSVs);
3. :func:`.plan.plan_orders`, :func:`.plan.plan_kept_states`: each layer's new order and kept states;
4. :func:`.compute.reduce_layers`: every reduced system and its report entry, before anything changes;
5. :func:`.certify.record_before`: the maps and outputs the certificates compare against;
6. inside :func:`.apply.rollback_on_failure` (everything restored exactly on any failure):
   :func:`.apply.cut_selective_` (selective layers), :func:`.apply.load_systems_` (the LTI layers and the
   optimizer), :func:`.certify.certify_` (the measured output change; the H-infinity figures on request);
7. :func:`.apply.finish_`: the changed parameters marked and their updates re-warmed.

:mod:`.report` holds what the call returns (and its table), :mod:`._guards` the checks for what real
training stacks hold (DDP, FSDP2, frozen layers, gradient accumulation), :mod:`.progress` the progress of
slow work, :mod:`.selective` the state selection of selective (Mamba-style) layers
(:func:`adapters.torch.compress_selective_`, which step 6 calls). All numerics are in :mod:`lti_reduce`.
"""
