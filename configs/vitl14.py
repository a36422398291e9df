"""ViT-L-14 EmoCapCLIP on a TPU VM / GPU host, initialised from CLIP weights converted with
`python -m emocap_jax.convert`:

    python -m emocap_jax.main --config=configs/vitl14.py --workdir=gs://bucket/runs/vitl14 \
        --config.data.train_dir=/data/emocap_tfrecords --config.init_from=ckpt/ViT-L-14 \
        --config.eval.zero_shot_dir=/data/rafdb_tfrecords/test
"""
from configs import default


def get_config():
    return default.clip_finetune_config("ViT-L-14", global_batch_size=512, num_steps=4000,
                                        learning_rate=1e-5)
