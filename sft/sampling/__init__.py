"""Sampling and evaluation: the diffusion sampler, chat, evaluation, the AR baseline, and loading a
run, export or adapter for any of them."""
