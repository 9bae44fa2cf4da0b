"""What CogVideoX checkpoints are, read from their configs alone. Torch-free.

The web process (launch advice, dataset report, model card) and the trainer share these rules:
which variant a checkpoint is, what shapes it trains at, and how a LoRA of it is used with
diffusers. The variant always comes from the checkpoint's own configs: an image-conditioned
transformer (in_channels twice out_channels, 32 for 16 latent channels) is image-to-video, a
temporal patch of 2 is the 1.5 generation, rotary positions without it the 5B. Only a Hub id
whose configs are not at hand is sized by its name (`guess_variant`), and only for estimates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.config import nearest_valid_frames

FAMILY = "cogvideox"
TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
T2V_PIPELINE = "CogVideoXPipeline"
I2V_PIPELINE = "CogVideoXImageToVideoPipeline"
TEXT_TO_VIDEO = ("2b", "5b", "1.5")
IMAGE_TO_VIDEO = ("5b-i2v", "1.5-i2v")
VARIANTS = TEXT_TO_VIDEO + IMAGE_TO_VIDEO
TITLES = {
    "2b": "CogVideoX-2b",
    "5b": "CogVideoX-5b",
    "1.5": "CogVideoX1.5-5B",
    "5b-i2v": "CogVideoX-5b-I2V",
    "1.5-i2v": "CogVideoX1.5-5B-I2V",
}
# Transformer settings a finetuned transformer must share with the base it runs beside.
SHAPE_KEYS = (
    "in_channels",
    "out_channels",
    "text_embed_dim",
    "patch_size",
    "patch_size_t",
    "temporal_compression_ratio",
    "use_rotary_positional_embeddings",
)
IGNORE_FLAG = "--ignore_learned_positional_embeddings"


@dataclass(frozen=True)
class FamilyRules:
    """What the loaded checkpoint's architecture asks of the data."""

    temporal_compression: int
    spatial_compression: int
    patch_size: int
    patch_size_t: int | None
    scaling_factor: float
    rotary: bool
    image_conditioned: bool = False  # I2V: the image's latents ride beside the noisy video's
    # (frames, height, width) the learned positional embeddings were made for (5b-I2V), or None.
    learned_positions: tuple[int, int, int] | None = None
    ofs: bool = False  # the 1.5-I2V's extra "ofs" embedding, always 2.0
    invert_scale_latents: bool = False  # the 1.5 VAE: image latents scaled by 1/scaling_factor

    @property
    def frame_step(self) -> int:
        """Clips have frame_step*k+1 frames: 4k+1, and 8k+1 for the temporal-patch-2 family."""
        return self.temporal_compression * (self.patch_size_t or 1)

    @property
    def family(self) -> str:
        if self.patch_size_t:
            return "CogVideoX1.5"
        return "CogVideoX (5B-style, rotary)" if self.rotary else "CogVideoX (2B-style)"

    @property
    def variant(self) -> str:
        base = "1.5" if self.patch_size_t else "5b" if self.rotary else "2b"
        return f"{base}-i2v" if self.image_conditioned else base

    @property
    def title(self) -> str:
        return TITLES[self.variant]

    def latent_frames(self, frames: int) -> int:
        latent = (frames - 1) // self.temporal_compression + 1
        if self.patch_size_t and latent % self.patch_size_t:
            latent += self.patch_size_t - latent % self.patch_size_t
        return latent

    def video_tokens(self, frames: int, height: int, width: int) -> int:
        """The transformer's tokens for one clip: one per patch of the latent video."""
        side = self.spatial_compression * self.patch_size
        temporal_patches = self.latent_frames(frames) // (self.patch_size_t or 1)
        return temporal_patches * (height // side) * (width // side)

    def shape_problem(
        self, frames: int, height: int, width: int, ignore_learned_positions: bool = False
    ) -> str | None:
        """Why this checkpoint can't train or sample at FxHxW (one sentence), or None."""
        shape = f"{frames}x{height}x{width}"
        step = self.frame_step
        if (frames - 1) % step:
            nearest = " or ".join(str(v) for v in nearest_valid_frames(frames, step))
            return (
                f"{shape} has {frames} frames, but {self.family} needs {step}k+1 frames; "
                f"the nearest are {nearest}"
            )
        if self.learned_positions and not ignore_learned_positions:
            allowed = "x".join(str(v) for v in self.learned_positions)
            if shape != allowed:
                return (
                    f"{shape} is not {allowed}, the only shape {self.title}'s learned "
                    f"positional embeddings know; use {allowed}, or add {IGNORE_FLAG} to train "
                    "without them (the model card and previews then drop them too)"
                )
        return None


def rules_from_configs(transformer: dict[str, Any], vae: dict[str, Any]) -> FamilyRules:
    """The rules of a checkpoint, from its transformer and VAE config.json contents."""
    spatial = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    in_channels = int(transformer.get("in_channels", 16))
    out_channels = int(transformer.get("out_channels") or in_channels)
    learned = None
    if transformer.get("use_learned_positional_embeddings"):
        learned = (
            int(transformer.get("sample_frames", 49)),
            int(transformer.get("sample_height", 60)) * spatial,
            int(transformer.get("sample_width", 90)) * spatial,
        )
    return FamilyRules(
        temporal_compression=int(vae.get("temporal_compression_ratio", 4)),
        spatial_compression=spatial,
        patch_size=int(transformer.get("patch_size", 2)),
        patch_size_t=transformer.get("patch_size_t"),
        scaling_factor=float(vae.get("scaling_factor", 1.15258426)),
        rotary=bool(transformer.get("use_rotary_positional_embeddings", False)),
        image_conditioned=in_channels == 2 * out_channels,
        learned_positions=learned,
        ofs=transformer.get("ofs_embed_dim") is not None,
        invert_scale_latents=bool(vae.get("invert_scale_latents", False)),
    )


def guess_variant(name: str) -> str | None:
    """A Hub id's variant by its name, for estimates only (the trainer reads the configs)."""
    name = name.lower()
    size = "1.5" if "1.5" in name else "5b" if "5b" in name else "2b" if "2b" in name else None
    if size is None:
        return None
    return f"{size}-i2v" if "i2v" in name and size != "2b" else size


def size_class(variant: str) -> str:
    """The text-to-video sibling of a variant: the I2V models have their sizes and memory."""
    return variant.removesuffix("-i2v")


def has_learned_positions(variant: str, transformer: dict[str, Any] | None) -> bool:
    """Whether learned positional embeddings tie the model to one shape: its config says so,
    or, without a config at hand, its variant is the 5b-I2V (the one released that way)."""
    if transformer is not None:
        return bool(transformer.get("use_learned_positional_embeddings"))
    return variant == "5b-i2v"


def pipeline_class_name(variant: str | None) -> str:
    return I2V_PIPELINE if variant in IMAGE_TO_VIDEO else T2V_PIPELINE


def card_code(
    variant: str | None,
    base: str,
    repo_id: str,
    lora: bool,
    prompt: str,
    ignore_learned_positions: bool = False,
) -> list[str]:
    """The model card's Python snippet: load the base, apply the weights, generate (an unknown
    variant, None, is shown as text-to-video)."""
    image_to_video = variant in IMAGE_TO_VIDEO
    pipeline = pipeline_class_name(variant)
    imports = [pipeline] if lora else [pipeline, TRANSFORMER_CLASS]
    code = ["import torch", f"from diffusers import {', '.join(imports)}"]
    code += [
        f"from diffusers.utils import export_to_video{', load_image' if image_to_video else ''}"
    ]
    code += [""]
    if not lora:
        code += [
            f"transformer = {TRANSFORMER_CLASS}.from_pretrained(",
            f'    "{repo_id}", subfolder="transformer", torch_dtype=torch.bfloat16',
            ")",
        ]
    code += [
        f"pipe = {pipeline}.from_pretrained(",
        f'    "{base}", torch_dtype=torch.bfloat16' + ("" if lora else ", transformer=transformer"),
        ').to("cuda")',
    ]
    if ignore_learned_positions and lora:
        code += [
            "# Trained without the base's learned positional embeddings: drop them here too.",
            "pipe.transformer.patch_embed.use_learned_positional_embeddings = False",
        ]
    if lora:
        code += [
            f'pipe.load_lora_weights("{repo_id}", adapter_name="cogvideox-lora")',
            'pipe.set_adapters(["cogvideox-lora"], [0.75])',
        ]
    code += [""]
    if image_to_video:
        code += [
            'image = load_image("your-image.png")  # a path or a URL',
            f"video = pipe(image=image, prompt={json.dumps(prompt)}).frames[0]",
        ]
    else:
        code += [f"video = pipe({json.dumps(prompt)}).frames[0]"]
    code += ['export_to_video(video, "output.mp4")']
    return code
