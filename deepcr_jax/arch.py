"""The topology of deepCR's UNets, described once.

deepCR 0.3.1 builds two UNets (``UNet2``/``UNet2Sigmoid`` and
``UNet3``/``UNet3Sigmoid``): an encoder of double-conv blocks (``inc``,
``down1``, ``down2``), each after a 2×2 max-pool but the first, and a decoder
of up blocks (``up7``, ``up8``: 2×2 transposed conv, concatenation with the
encoder's skip, double conv) ending in a 1×1 conv ``outc``. :func:`blocks`
lists those blocks with their channel counts and their names in flax and in
torch; the flax module (:mod:`deepcr_jax.nets`), the fused native forward
(:mod:`deepcr_jax.native.unet`) and the converter's key table
(:mod:`deepcr_jax.convert`) all walk this one list.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Architecture", "Block", "blocks"]


@dataclasses.dataclass(frozen=True)
class Block:
    """One double-conv block of the UNet.

    Attributes
    ----------
    name : str
        Flax submodule name (``inc``, ``down1``, ``down2``, ``up7``, ``up8``).
    role : {"encoder", "decoder"}
        Encoder blocks pool first (all but ``inc``); decoder blocks upsample
        their input with a 2×2 transposed conv and read [skip, upsampled].
    in_channels : int
        Channels the block's first conv reads (for decoder blocks: skip +
        upsampled, i.e. twice ``out_channels``).
    out_channels : int
    pool : bool
        Whether a 2×2 max-pool precedes the block (encoder, all but the first).
    torch_prefix : str
        Prefix of the block's double conv in deepCR's state dicts.
    """

    name: str
    role: str
    in_channels: int
    out_channels: int
    pool: bool
    torch_prefix: str

    @property
    def conv_path(self) -> tuple[str, ...]:
        """Flax path of the block's double conv (``up`` blocks nest it in ``conv``)."""
        return (self.name, "conv") if self.role == "decoder" else (self.name,)


def blocks(depth: int, hidden: int, in_channels: int) -> tuple[Block, ...]:
    """The blocks of a deepCR UNet in forward order: encoder, then decoder.

    Level ``k`` (0-based) has ``hidden * 2**k`` channels; decoder block ``j``
    joins level ``depth - 2 - j``'s skip to the upsampled output below it.
    """
    if depth not in (2, 3):
        raise ValueError(f"depth must be 2 or 3; got {depth}")
    out: list[Block] = [Block("inc", "encoder", in_channels, hidden, False, "inc.conv.conv")]
    for k in range(1, depth):
        c = hidden * 2**k
        out.append(Block(f"down{k}", "encoder", c // 2, c, True, f"down{k}.mpconv.1.conv"))
    # deepCR names its up blocks from the deepest: up7 (depth 3 only), up8
    for k in range(depth - 2, -1, -1):
        c = hidden * 2**k
        name = f"up{8 - k}"
        out.append(Block(name, "decoder", 2 * c, c, False, f"{name}.conv.conv"))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a deepCR network file holds, as far as tensors can tell.

    Attributes
    ----------
    depth : int
        2 or 3 resolution levels.
    hidden : int
        Channels of the first level.
    in_channels : int
        1 for mask networks (image), 2 for inpainting networks (masked image, mask).
    norm : {"batch", "weight", "none"}
        Normalisation in the conv blocks.
    head : {"sigmoid", "identity"}
        ``sigmoid`` for mask networks, ``identity`` for inpainting networks.
    out_channels : int
        Always 1 for deepCR.
    """

    depth: int
    hidden: int
    in_channels: int
    norm: str
    head: str
    out_channels: int = 1

    def __post_init__(self) -> None:
        if self.depth not in (2, 3):
            raise ValueError(f"depth must be 2 or 3; got {self.depth}")
        if self.norm not in ("batch", "weight", "none"):
            raise ValueError(f"norm must be 'batch', 'weight' or 'none'; got {self.norm!r}")
        if self.head not in ("sigmoid", "identity"):
            raise ValueError(f"head must be 'sigmoid' or 'identity'; got {self.head!r}")

    @classmethod
    def for_kind(cls, kind: str, depth: int, hidden: int, norm: str = "batch") -> Architecture:
        """A mask (1 input channel, sigmoid) or inpainting (2 channels, identity) network."""
        if kind not in ("mask", "inpaint"):
            raise ValueError(f"kind must be 'mask' or 'inpaint'; got {kind!r}")
        if kind == "mask":
            return cls(depth, hidden, 1, norm, "sigmoid")
        return cls(depth, hidden, 2, norm, "identity")

    @property
    def kind(self) -> str:
        """``"inpaint"`` for two input channels (masked image, mask), else ``"mask"``."""
        return "inpaint" if self.in_channels == 2 else "mask"

    @property
    def blocks(self) -> tuple[Block, ...]:
        """:func:`blocks` of this network."""
        return blocks(self.depth, self.hidden, self.in_channels)

    def module(self, norm: str | None = None, **kwargs):
        """The flax :class:`~deepcr_jax.nets.UNet` (``norm`` overrides, e.g. ``"affine"``)."""
        from deepcr_jax.nets import UNet

        return UNet(
            depth=self.depth,
            hidden=self.hidden,
            out_channels=self.out_channels,
            norm=self.norm if norm is None else norm,
            head=self.head,
            **kwargs,
        )

    def to_dict(self) -> dict:
        """JSON-able form (``Architecture(**d)`` restores it)."""
        return dataclasses.asdict(self)
