"""The training recipes (flat YAML files, one per run; `recipe=NAME`), installed as the package
`mmvsd.recipes` (pyproject.toml maps this folder there) so that a wheel carries them."""
