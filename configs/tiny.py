"""Tiny model for tests: the architecture of the peers' tiny fixtures (32 px, 1000-token vocab)."""
from configs import default


def get_config():
    config = default.get_config()
    config.model_name = "tiny"
    config.model = default.model_config("tiny")
    # The fixtures' 1000-token vocabulary is for weight parity; training tokenises real captions.
    config.model.text.vocab_size = 49408
    config.model.text.context_length = 32
    config.train.global_batch_size = 16
    config.train.num_steps = 20
    config.train.log_every = 5
    config.train.checkpoint_every = 10
    config.optim.warmup_steps = 5
    config.data.worker_count = 0
    return config
