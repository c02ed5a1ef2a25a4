"""``python -m tacorl_offline.cli`` (what torchrun launches)."""

from tacorl_offline.cli import main

main()
