"""ViT-B-32 EmoCapCLIP on a TPU VM / GPU host: OpenAI CLIP initialisation, EmoCap-style caption corpus.

    python -m emocap_jax.main --config=configs/vitb32.py --workdir=gs://bucket/runs/vitb32 \
        --config.data.train_dir=/data/emocap100k --config.init_from=/ckpt/ViT-B-32
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model_name = "ViT-B-32"
    config.model = default.model_config("ViT-B-32", dtype="bfloat16")
    config.train.global_batch_size = 1024
    config.train.num_steps = 3000
    config.optim.learning_rate = 2e-5
    config.optim.warmup_steps = 300
    config.optim.weight_decay = 0.1
    # Initialised from CLIP, caption embeddings are meaningful from the start: mine right away.
    config.loss.mining.warmup_steps = 0
    return config
