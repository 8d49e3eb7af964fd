"""Command-line experiments (``python -m experiments.deblur_celeba``) and their configs."""
