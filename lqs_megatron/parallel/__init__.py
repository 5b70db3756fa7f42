"""The parallel layer at the bottom of the package (docs/design.md, "Layers"): nothing here imports
anything of lqs_megatron but :mod:`lqs_megatron.errors`.

- :mod:`~lqs_megatron.parallel.dims`: :class:`ParallelDims` (the rank layout, process groups,
  collectives, ``broadcast_object``), :func:`init_distributed` (torchrun's environment) and
  :func:`rank_slice`, the one way to split work over data-parallel ranks;
- :mod:`~lqs_megatron.parallel.mappings`: the conjugate autograd pairs of tensor parallelism
  (copy/reduce, split/gather) on explicit groups, double-backward safe;
- :mod:`~lqs_megatron.parallel.layers`: column/row-parallel linears, the vocab-parallel
  embedding and LM head built on them.
"""
