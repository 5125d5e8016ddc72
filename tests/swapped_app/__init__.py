"""The README's own client model ("Your own client model"), swapped in by
``tests.swapped_settings``; ``tests/swapped/test_readme.py`` keeps the two identical."""
