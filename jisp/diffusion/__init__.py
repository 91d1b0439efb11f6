"""Diffusion math: noise schedules, forward process, losses and samplers."""
