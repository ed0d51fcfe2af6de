"""Codecs: how a module that plain transformers cannot rebuild (a quantized or factorised layer) is stored.

A technique that replaces `nn.Linear` with its own module type also registers a codec for that type. Checkpoints
store the codec's tensors in safetensors under the module's name plus its metadata in the manifest, and loading
asks the codec to rebuild the module: no pickle, and no base model needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


class Codec:
    """Subclass with `name`, `module_type`, `encode` and `decode`."""

    name: ClassVar[str]
    module_type: ClassVar[type]
    container: ClassVar[bool] = False
    """A container codec rebuilds only the module's shell (its children are saved and loaded as usual, through
    their own codecs where they have one); a leaf codec owns every tensor under the module."""

    def encode(self, module: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return (tensors, JSON-serialisable metadata) that fully describe `module`."""
        raise NotImplementedError

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Any:
        """Rebuild the module from what `encode` returned."""
        raise NotImplementedError
