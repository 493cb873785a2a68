"""The project's configs: the YAML files Hydra composes (training's groups, `build.yaml`, `tools/`), and
(`configs.compose`) how an entry point that is not a `@hydra.main` composes them, and the one `ConfigError`."""
