"""The blog's U-Net noise predictor, in pure PyTorch.

Class names, constructor arguments and module attribute names follow "The Annotated Diffusion
Model" exactly, so a ``state_dict`` saved from the blog's code loads here with ``strict=True``
and gives the same output. The only changes are clear errors for configurations that the blog's
code rejects with an obscure message (or not at all).
"""

import math
from functools import partial

import torch
from einops import rearrange
from torch import nn


def exists(x):
    return x is not None


def default(val, d):
    if exists(val):
        return val
    return d() if callable(d) else d


class Residual(nn.Module):
    """Adds the input to ``fn``'s output: ``fn(x) + x``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args, **kwargs):
        return self.fn(x, *args, **kwargs) + x


def Upsample(dim):
    """Transposed convolution that doubles H and W: (B, dim, H, W) -> (B, dim, 2H, 2W)."""
    return nn.ConvTranspose2d(dim, dim, 4, 2, 1)


def Downsample(dim):
    """Strided convolution that halves H and W: (B, dim, H, W) -> (B, dim, H//2, W//2)."""
    return nn.Conv2d(dim, dim, 4, 2, 1)


class SinusoidalPositionEmbeddings(nn.Module):
    """Transformer-style embedding of the timestep: ``time: (B,)`` -> ``(B, dim)``."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, device=time.device) * -embeddings)
        embeddings = time[:, None] * embeddings[None, :]
        return torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)


def check_groups(num_channels, groups, name):
    """Raise a ValueError unless ``groups`` divides ``num_channels`` (GroupNorm's requirement)."""
    if groups < 1 or num_channels % groups != 0:
        raise ValueError(
            f"{name}={groups} must divide the {num_channels} channels it normalises; "
            f"divisors of {num_channels} are {[g for g in range(1, num_channels + 1) if num_channels % g == 0]}"
        )


class Block(nn.Module):
    """3x3 conv -> GroupNorm -> optional ``x * (scale + 1) + shift`` -> SiLU.

    x: (B, dim, H, W) -> (B, dim_out, H, W); scale, shift: (B, dim_out, 1, 1).
    """

    def __init__(self, dim, dim_out, groups=8):
        super().__init__()
        check_groups(dim_out, groups, "groups")
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.proj(x)
        x = self.norm(x)
        if exists(scale_shift):
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two ``Block``s with the time embedding added between them, plus a residual 1x1 conv.

    x: (B, dim, H, W), time_emb: (B, time_emb_dim) -> (B, dim_out, H, W).
    """

    def __init__(self, dim, dim_out, *, time_emb_dim=None, groups=8):
        super().__init__()
        self.mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out))
            if exists(time_emb_dim)
            else None
        )
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb=None):
        h = self.block1(x)
        if exists(self.mlp) and exists(time_emb):
            time_emb = self.mlp(time_emb)
            h = rearrange(time_emb, "b c -> b c 1 1") + h
        h = self.block2(h)
        return h + self.res_conv(x)


class ConvNextBlock(nn.Module):
    """Depthwise 7x7 conv, time conditioning, then GroupNorm(1)/conv/GELU/GroupNorm(1)/conv.

    x: (B, dim, H, W), time_emb: (B, time_emb_dim) -> (B, dim_out, H, W).
    """

    def __init__(self, dim, dim_out, *, time_emb_dim=None, mult=2, norm=True):
        super().__init__()
        self.mlp = (
            nn.Sequential(nn.GELU(), nn.Linear(time_emb_dim, dim))
            if exists(time_emb_dim)
            else None
        )
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb=None):
        h = self.ds_conv(x)
        if exists(self.mlp) and exists(time_emb):
            condition = self.mlp(time_emb)
            h = h + rearrange(condition, "b c -> b c 1 1")
        h = self.net(h)
        return h + self.res_conv(x)


class Attention(nn.Module):
    """Multi-head softmax self-attention over the H*W positions: (B, dim, H, W) -> same."""

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (h c) x y -> b h c (x y)", h=self.heads) for t in qkv)
        q = q * self.scale
        sim = torch.einsum("b h d i, b h d j -> b h i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b h i j, b h d j -> b h i d", attn, v)
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=h, y=w)
        return self.to_out(out)


class LinearAttention(nn.Module):
    """Linear attention (q softmaxed over channels, k over positions), then conv + GroupNorm(1).

    (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (h c) x y -> b h c (x y)", h=self.heads) for t in qkv)
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        q = q * self.scale
        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        out = rearrange(out, "b h c (x y) -> b (h c) x y", h=self.heads, x=h, y=w)
        return self.to_out(out)


class PreNorm(nn.Module):
    """GroupNorm(1, dim) before ``fn``."""

    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, x):
        x = self.norm(x)
        return self.fn(x)


class Unet(nn.Module):
    """The blog's conditional U-Net: predicts the noise in ``x`` at timestep ``time``.

    Args:
        dim: base channel count; stage ``i`` has ``dim * dim_mults[i]`` channels.
        init_dim: channels after the first 7x7 conv (default ``dim // 3 * 2``).
        out_dim: output channels (default ``channels``).
        dim_mults: channel multiplier of each resolution; every stage but the last halves H, W.
        channels: input image channels.
        with_time_emb: condition the blocks on a sinusoidal time embedding.
        resnet_block_groups: GroupNorm groups of the ResNet blocks (``use_convnext=False``).
        use_convnext: ConvNeXt blocks (the blog's default) instead of ResNet blocks.
        convnext_mult: channel expansion inside a ConvNeXt block.

    Shapes: ``x: (B, channels, H, W)``, ``time: (B,)`` integer or float timesteps ->
    ``(B, out_dim, H, W)``. H and W must be divisible by ``2 ** (len(dim_mults) - 1)``.
    """

    def __init__(
        self,
        dim,
        init_dim=None,
        out_dim=None,
        dim_mults=(1, 2, 4, 8),
        channels=3,
        with_time_emb=True,
        resnet_block_groups=8,
        use_convnext=True,
        convnext_mult=2,
    ):
        super().__init__()
        if not dim_mults:
            raise ValueError("dim_mults must name at least one resolution, e.g. (1, 2, 4)")
        self.channels = channels
        init_dim = default(init_dim, dim // 3 * 2)
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))

        if use_convnext:
            block_klass = partial(ConvNextBlock, mult=convnext_mult)
        else:
            normed_channels = sorted(set(dims[1:]) | {dim})
            for channels_normed in normed_channels:
                if channels_normed % resnet_block_groups != 0:
                    raise ValueError(
                        f"resnet_block_groups={resnet_block_groups} must divide every stage's "
                        f"channel count {normed_channels} (dim={dim} times dim_mults="
                        f"{tuple(dim_mults)}); pick a dim that is a multiple of "
                        f"{resnet_block_groups} or groups that divide {dim}"
                    )
            block_klass = partial(ResnetBlock, groups=resnet_block_groups)

        if with_time_emb:
            time_dim = dim * 4
            self.time_mlp = nn.Sequential(
                SinusoidalPositionEmbeddings(dim),
                nn.Linear(dim, time_dim),
                nn.GELU(),
                nn.Linear(time_dim, time_dim),
            )
        else:
            time_dim = None
            self.time_mlp = None

        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        num_resolutions = len(in_out)

        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= (num_resolutions - 1)
            self.downs.append(
                nn.ModuleList(
                    [
                        block_klass(dim_in, dim_out, time_emb_dim=time_dim),
                        block_klass(dim_out, dim_out, time_emb_dim=time_dim),
                        Residual(PreNorm(dim_out, LinearAttention(dim_out))),
                        Downsample(dim_out) if not is_last else nn.Identity(),
                    ]
                )
            )

        mid_dim = dims[-1]
        self.mid_block1 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)
        self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim)))
        self.mid_block2 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)

        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            is_last = ind >= (num_resolutions - 1)
            self.ups.append(
                nn.ModuleList(
                    [
                        block_klass(dim_out * 2, dim_in, time_emb_dim=time_dim),
                        block_klass(dim_in, dim_in, time_emb_dim=time_dim),
                        Residual(PreNorm(dim_in, LinearAttention(dim_in))),
                        Upsample(dim_in) if not is_last else nn.Identity(),
                    ]
                )
            )

        out_dim = default(out_dim, channels)
        self.final_conv = nn.Sequential(block_klass(dim, dim), nn.Conv2d(dim, out_dim, 1))
        # Each downsampling halves (rounding down) and each upsampling doubles, so a size
        # round-trips only when it divides by 2 ** (number of downsamplings).
        self.size_multiple = 2 ** (num_resolutions - 1)

    def check_image_size(self, height, width):
        """Raise a ValueError unless (height, width) survives the down/up-sampling round trip."""
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"image size {height}x{width} must be divisible by {m} for dim_mults with "
                f"{len(self.downs)} resolutions; use a size such as {max(m, height // m * m)} or "
                f"fewer dim_mults (e.g. dim_mults=(1, 2, 4) for 28x28)"
            )

    def forward(self, x, time):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must have shape (batch, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        self.check_image_size(x.shape[-2], x.shape[-1])
        x = self.init_conv(x)
        t = self.time_mlp(time) if exists(self.time_mlp) else None
        h = []
        for block1, block2, attn, downsample in self.downs:
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            h.append(x)
            x = downsample(x)

        x = self.mid_block1(x, t)
        x = self.mid_attn(x)
        x = self.mid_block2(x, t)

        for block1, block2, attn, upsample in self.ups:
            x = torch.cat((x, h.pop()), dim=1)
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            x = upsample(x)
        return self.final_conv(x)
