"""The trainer's parts: config, aligned windows, losses, checkpoints, DDP, state, logging and the loop.

``finetune_decoder_48khz.py`` parses flags and runs the loop from here; import the parts by module
(``from snac.train.config import TrainConfig``) so each name says where it lives.
"""
