"""Tiny random CogVideoX pipelines: the released architectures shrunk to milliseconds a step.

`core.tiny` is the command line and the documented entry point; this module holds what names the
diffusers classes (nothing outside core/models does).
"""

from __future__ import annotations

VARIANTS = ("2b", "5b", "1.5")
I2V_VARIANTS = ("5b-i2v", "1.5-i2v")

# Real scaling factors of the families' VAEs; the tiny VAE keeps them so latent maths match.
SCALING_FACTOR = {"2b": 1.15258426, "5b": 0.7, "1.5": 0.7, "5b-i2v": 0.7, "1.5-i2v": 0.7}
_SNR_SHIFT = {"2b": 3.0, "5b": 1.0, "1.5": 1.0, "5b-i2v": 1.0, "1.5-i2v": 1.0}
TIME_DIM = 16
TEXT_DIM = 32
MAX_TEXT_TOKENS = 226


def _tokenizer_vocab() -> list[tuple[str, float]]:
    """A small sentencepiece-style unigram vocabulary: T5's special tokens, letters, digits."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{char}", -2.5) for char in letters]
    vocab += [(char, -3.0) for char in letters + "0123456789_.,!?'-"]
    return vocab


def build_tiny_pipeline(variant: str = "5b", seed: int = 0):
    """A pipeline with tiny random components of the given variant.

    The image-to-video variants keep what sets the released ones apart: the image's latents
    double the transformer's input channels; the 5b-I2V has learned positional embeddings, for
    its sample shape only (9x32x32 here, 49x480x720 released); the 1.5-I2V an `ofs` embedding,
    a temporal patch of 2, and a VAE that says invert_scale_latents.
    """
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    known = (*VARIANTS, *I2V_VARIANTS)
    if variant not in known:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {', '.join(known)}")
    image_to_video = variant in I2V_VARIANTS
    one_five = variant.startswith("1.5")
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # rotary needs a multiple of 16
        in_channels=8 if image_to_video else 4,
        out_channels=4,
        time_embed_dim=TIME_DIM,
        ofs_embed_dim=TIME_DIM if variant == "1.5-i2v" else None,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2 if one_five else None,
        temporal_compression_ratio=4,
        max_text_seq_length=MAX_TEXT_TOKENS,
        use_rotary_positional_embeddings=variant != "2b",
        use_learned_positional_embeddings=variant == "5b-i2v",
        patch_bias=not one_five,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        scaling_factor=SCALING_FACTOR[variant],
        invert_scale_latents=variant == "1.5-i2v",
    )
    # A trained VAE's posterior is nearly deterministic; a random one's log-variance is near 0,
    # which would bury each clip's latents in noise and leave nothing for a test to learn.
    with torch.no_grad():
        conv_out = vae.encoder.conv_out.conv
        conv_out.weight[4:] *= 0.01
        conv_out.bias[4:] = -12.0
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(_tokenizer_vocab()),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    tokenizer = T5Tokenizer(vocab=_tokenizer_vocab(), extra_ids=0)
    tokenizer.model_max_length = MAX_TEXT_TOKENS
    scheduler = CogVideoXDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=_SNR_SHIFT[variant],
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    pipeline_class = CogVideoXImageToVideoPipeline if image_to_video else CogVideoXPipeline
    return pipeline_class(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
