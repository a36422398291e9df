"""ViT-B-32 EmoCapCLIP on a TPU VM / GPU host, initialised from CLIP weights converted with
`python -m emocap_jax.convert`:

    python -m emocap_jax.main --config=configs/vitb32.py --workdir=gs://bucket/runs/vitb32 \
        --config.data.train_dir=/data/emocap_tfrecords --config.init_from=ckpt/ViT-B-32 \
        --config.eval.zero_shot_dir=/data/rafdb_tfrecords/test
"""
from configs import default


def get_config():
    return default.clip_finetune_config("ViT-B-32", global_batch_size=1024, num_steps=3000,
                                        learning_rate=2e-5)
