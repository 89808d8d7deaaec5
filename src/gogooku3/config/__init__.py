"""Configuration: Hydra composition (`compose`) and the typed schema (`schema`); values live in conf/*.yaml."""
