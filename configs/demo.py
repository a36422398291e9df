"""The out-of-the-box demo: a small CLIP trained from scratch on the embedded synthetic-faces corpus
(generated into the workdir on first use), then zero-shot evaluated on its held-out identities.
Sized for a 2-core CPU in under 10 minutes:

    python -m emocap_jax.main --config=configs/demo.py --workdir=runs/demo
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model_name = "demo"
    config.model = default.model_config("demo")
    # Measured on a 2-core CPU: the text tower and activation memory traffic dominate the step, so
    # the towers are shallow, sentences short (end-of-text is always kept), and blocks remat'ed
    # (less memory traffic made the step faster here, not slower).
    config.model.vision.image_size = 48
    config.model.vision.width = 128
    config.model.vision.layers = 3
    config.model.vision.heads = 2
    config.model.vision.mlp_dim = 512
    config.model.text.width = 96
    config.model.text.layers = 3
    config.model.text.heads = 2
    config.model.text.mlp_dim = 384
    config.model.text.context_length = 24
    config.model.remat = True
    config.data.synthetic.num = 6000
    config.data.synthetic.size = 64
    config.data.synthetic.eval_per_class = 40
    config.data.worker_count = 1
    config.data.crop_scale = (0.8, 1.0)   # keep the mouth and brows in the crop
    config.data.grayscale_prob = 0.0
    config.data.local_sentences_per_step = 2
    config.train.global_batch_size = 64
    config.train.num_steps = 600
    config.train.log_every = 25
    config.train.checkpoint_every = 200
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 40
    config.optim.weight_decay = 0.05
    # From random init every summary embedding is nearly the same, so mining would call every
    # pair a positive and teach collapse: it starts once the text tower tells captions apart.
    config.loss.mining.warmup_steps = 300
    config.loss.mining.threshold = 0.95
    # Class nouns as the synthetic captions use them, in the eval split's label order.
    config.eval.classes = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust",
                           "anger", "contempt")
    config.eval.batch_size = 64
    return config
