"""emocap_jax: EmoCapCLIP (facial-emotion CLIP from structured captions) in JAX/Flax.

    import emocap_jax
    model = emocap_jax.load(path)   # open_clip, OpenAI, Hugging Face or emocap_jax checkpoints
"""

__version__ = "0.1.0"


def load(path, source: str = "auto", **kwargs):
    """See `emocap_jax.api.load`. Imported lazily so `import emocap_jax` stays cheap."""
    from emocap_jax.api import load as _load  # lazy: `import emocap_jax` loads no JAX
    return _load(path, source=source, **kwargs)
