"""Tiny random CogVideoX pipelines: the released architectures shrunk to milliseconds a step.

`core.tiny` is the command line and the documented entry point; this module holds what names the
diffusers classes (nothing outside core/models does).
"""

from __future__ import annotations

VARIANTS = ("2b", "5b", "1.5")

# Real scaling factors of the families' VAEs; the tiny VAE keeps them so latent maths match.
SCALING_FACTOR = {"2b": 1.15258426, "5b": 0.7, "1.5": 0.7}
_SNR_SHIFT = {"2b": 3.0, "5b": 1.0, "1.5": 1.0}
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
    """A `CogVideoXPipeline` with tiny random components of the given family."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # rotary needs a multiple of 16
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2 if variant == "1.5" else None,
        temporal_compression_ratio=4,
        max_text_seq_length=MAX_TEXT_TOKENS,
        use_rotary_positional_embeddings=variant != "2b",
        patch_bias=variant != "1.5",
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
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
