"""Every paper setting and ablation as an ml_collections config (`get_config(arg)`).

Named by file (`--config jisp/configs/ddpm_fivek.py`, `--config configs/ddpm_fivek.py` from
a checkout) or by name from an installed wheel (`--config ddpm_fivek.py:nres=2`); see
jisp.core.config for the loader. Configs build on each other by import.
"""
