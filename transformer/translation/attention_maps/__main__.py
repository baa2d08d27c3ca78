"""``python -m transformer.translation.attention_maps``: see :mod:`.cli`."""

from transformer.translation.attention_maps.cli import main

main()
