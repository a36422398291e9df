"""The embedded synthetic-faces corpus: procedural faces drawn from action units (faces.py),
captions written from the drawn AUs (captions.py) and the seeded corpus generator (corpus.py).
A run without a train_dir trains on it (train.prepare_data); `python -m data_prep.synthetic`
writes it to a folder."""
