"""emocap_jax: EmoCapCLIP (facial-emotion CLIP from structured captions) in JAX/Flax."""

__version__ = "0.1.0"
