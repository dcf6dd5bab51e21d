"""A KV cache for sampling that never copies what it holds.

transformers' ``DynamicLayer`` re-concatenates a layer's whole cache at every generated token (about a third of
the sampling time of a small model). :func:`preallocated_cache` gives the model a ``DynamicCache`` whose layers
write each step into buffers sized for the whole generation instead.

This subclasses a transformers internal, so it relies only on what every supported release (4.56 to 5.x) shares:
the ``DynamicCache(config=...)`` constructor with a ``layers`` list, and a layer's ``update(keys, values, ...)``,
``keys`` and ``values``. Everything else is done here: the layer's own ``lazy_initialization`` changed its
signature between 4.57 and 5.x, and ``is_initialized`` only exists since 4.57 (it is set, never read). Where the
installed release does not fit, the model builds its own cache (None is returned).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn


@functools.cache
def _preallocated_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer that writes into preallocated buffers and returns views of their filled part."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0
            self.key_buffer: Optional[torch.Tensor] = None
            self.value_buffer: Optional[torch.Tensor] = None

        def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device  # read by transformers 4.x
            self.key_buffer = key_states.new_empty(key_states.shape[:-2] + (self.capacity, key_states.shape[-1]))
            self.value_buffer = value_states.new_empty(
                value_states.shape[:-2] + (self.capacity, value_states.shape[-1]))
            self.is_initialized = True  # what get_seq_length and others check since transformers 4.57

        def update(self, key_states, value_states, *args, **kwargs):
            if self.key_buffer is None:
                self._allocate(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache sized for {self.capacity} positions asked to hold {end}")
            self.key_buffer[..., self.length:end, :].copy_(key_states)
            self.value_buffer[..., self.length:end, :].copy_(value_states)
            self.length = end
            self.keys = self.key_buffer[..., :end, :]
            self.values = self.value_buffer[..., :end, :]
            return self.keys, self.values

    return PreallocatedLayer


def preallocated_cache(model: nn.Module, capacity: int) -> Optional[object]:
    """A transformers DynamicCache for ``capacity`` positions that never copies what it holds, or None (let the
    model make its own) when the installed transformers or the model's layer types do not allow it."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=model.config)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None  # sliding-window, linear-attention or other special layers keep their own cache
        cache.layers = [_preallocated_layer_class()(capacity) for _ in layers]
    except (ImportError, TypeError, ValueError, AttributeError):
        return None
    return cache


def reserve(cache: object, capacity: int) -> None:
    """Make a cache from :func:`preallocated_cache` hold ``capacity`` positions (an episode's next turn), moving
    what it holds into larger buffers when needed; any other cache grows by itself."""
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "capacity", capacity) >= capacity:
            continue
        layer.capacity = capacity
        if layer.key_buffer is None:
            continue
        old_keys, old_values = layer.key_buffer[..., :layer.length, :], layer.value_buffer[..., :layer.length, :]
        layer.key_buffer = old_keys.new_empty(old_keys.shape[:-2] + (capacity, old_keys.shape[-1]))
        layer.value_buffer = old_values.new_empty(old_values.shape[:-2] + (capacity, old_values.shape[-1]))
        layer.key_buffer[..., :layer.length, :].copy_(old_keys)
        layer.value_buffer[..., :layer.length, :].copy_(old_values)
        layer.keys = layer.key_buffer[..., :layer.length, :]
        layer.values = layer.value_buffer[..., :layer.length, :]
